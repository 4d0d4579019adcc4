"""MixtureOfFactorAnalyzers inference against dense-covariance references."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from gmlab.distributions.lowrank import lowrank_covariance
from gmlab.distributions.mfa import MixtureOfFactorAnalyzers

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_mixture(k=3, d=6, l=2, noise="diagonal", seed=0):
    g = torch.Generator().manual_seed(seed)
    m = MixtureOfFactorAnalyzers(k, d, l, noise).to(F64)
    with torch.no_grad():
        m.means.copy_(torch.randn(k, d, generator=g, dtype=F64) * 2)
        m.factors.copy_(torch.randn(k, d, l, generator=g, dtype=F64))
        m.log_noise.copy_(torch.randn(m.log_noise.shape, generator=g, dtype=F64) * 0.3 - 1)
        m.logits.copy_(torch.randn(k, generator=g, dtype=F64))
    return m


def dense(m):
    cov = lowrank_covariance(m.factors.detach(), m.log_noise.detach())
    comps = MultivariateNormal(m.means.detach(), covariance_matrix=cov)
    return MixtureSameFamily(Categorical(logits=m.logits.detach()), comps), cov


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
@pytest.mark.parametrize("l", [0, 2])
def test_log_prob_and_posteriors_match_dense_mixture(noise, l):
    m = random_mixture(l=l, noise=noise)
    ref, _ = dense(m)
    x = ref.sample((64,))
    torch.testing.assert_close(m.log_prob(x), ref.log_prob(x))
    comp = ref.component_distribution.log_prob(x[:, None, :]) + ref.mixture_distribution.logits
    post = torch.softmax(comp, 1)
    torch.testing.assert_close(m.responsibilities(x), post)
    assert torch.equal(m.predict(x), post.argmax(1))


def test_samples_have_the_mixture_moments():
    m = random_mixture(k=2, d=4, l=2)
    ref, cov = dense(m)
    gen = torch.Generator().manual_seed(1)
    x, comp = m.sample(200_000, generator=gen)
    assert x.shape == (200_000, 4) and comp.shape == (200_000,)
    torch.testing.assert_close(x.mean(0), ref.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), _mix_cov(m, cov), atol=0.08, rtol=0.02)
    freq = torch.bincount(comp, minlength=2).double() / len(comp)
    torch.testing.assert_close(freq, m.weights.detach(), atol=0.01, rtol=0)


def _mix_cov(m, cov):
    w, mu = m.weights.detach(), m.means.detach()
    mean = w @ mu
    return (w[:, None, None] * (cov + (mu - mean)[:, :, None] * (mu - mean)[:, None, :])).sum(0)


def test_noise_free_samples_lie_in_the_component_subspaces():
    m = random_mixture(k=3, d=6, l=2)
    x, comp = m.sample(500, with_noise=False)
    for k in range(3):
        assert (comp == k).any()
        rel = (x[comp == k] - m.means[k]).T  # [d, n_k], in span(A_k)
        a = m.factors[k].detach()
        resid = rel - a @ torch.linalg.lstsq(a, rel).solution
        assert resid.abs().max() < 1e-9


def brute_force_conditional(m, x, mask, mode):
    """Hidden coordinates' conditional mean from dense covariances, one sample at a time."""
    ref, cov = dense(m)
    out = x.clone()
    for b in range(len(x)):
        o, h = mask[b], ~mask[b]
        logp, means = [], []
        for k in range(m.n_components):
            mu, s = m.means[k].detach(), cov[k]
            if o.any():
                soo = s[o][:, o]
                logp.append(MultivariateNormal(mu[o], soo).log_prob(x[b, o]))
                gain = s[h][:, o] @ torch.linalg.inv(soo)
                means.append(mu[h] + gain @ (x[b, o] - mu[o]))
            else:
                logp.append(torch.tensor(0.0, dtype=F64))
                means.append(mu[h])
        post = torch.softmax(torch.stack(logp) + m.log_weights.detach(), 0)
        means = torch.stack(means)
        out[b, h] = means[post.argmax()] if mode == "map" else post @ means
    return out


@pytest.mark.parametrize("mode", ["map", "mixture"])
@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_inpainting_equals_the_gaussian_conditional(mode, noise):
    m = random_mixture(k=3, d=7, l=2, noise=noise, seed=3)
    ref, _ = dense(m)
    x = ref.sample((12,))
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(12, 7, generator=gen) < 0.5  # a different mask per sample
    mask[0] = True  # all observed
    mask[1] = False  # nothing observed: the prior mean (map: the likeliest component's)
    got = m.reconstruct(x, mask, mode=mode)
    torch.testing.assert_close(got, brute_force_conditional(m, x, mask, mode))
    assert torch.equal(got[mask], x[mask])


def test_observed_posterior_with_everything_observed_is_the_joint():
    m = random_mixture()
    ref, _ = dense(m)
    x = ref.sample((5,))
    log_joint, _ = m.observed_posterior(x, torch.ones_like(x, dtype=torch.bool))
    torch.testing.assert_close(log_joint, m.joint_log_prob(x))


def test_float32_inference_is_finite_and_close():
    m = random_mixture(k=4, d=30, l=3)
    ref, _ = dense(m)
    x = ref.sample((100,))
    m32 = random_mixture(k=4, d=30, l=3).float()
    got = m32.log_prob(x.float()).double()
    assert torch.isfinite(got).all()
    assert (got - m.log_prob(x)).abs().max() < 1e-2


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="noise must be"):
        MixtureOfFactorAnalyzers(2, 3, 1, noise="full")
    m = random_mixture()
    with pytest.raises(ValueError, match="dimension 6"):
        m.log_prob(torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="mode must be"):
        m.reconstruct(torch.zeros(2, 6, dtype=F64), torch.ones(2, 6, dtype=torch.bool), "mean")
