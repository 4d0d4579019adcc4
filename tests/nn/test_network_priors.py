"""Network priors: the MADE-flow prior and the VampPrior against brute-force references."""

import math

import pytest
import torch
from torch import distributions as D

from gmlab.distributions.priors import EncoderAccess
from gmlab.nn.mlp import MLPEncoder
from gmlab.nn.network_priors import FlowPrior, VampPrior

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_flow_prior_density_integrates_to_one_in_1d():
    torch.manual_seed(3)
    prior = FlowPrior(dim=1, hidden=(8,))
    with torch.no_grad():
        prior.flow.made.out.bias.copy_(torch.tensor([0.7, -0.4]))  # eps = z * e^-0.4 + 0.7
    grid = torch.linspace(-30, 30, 60001)[:, None]
    mass = prior.log_prob(grid).exp().sum() * (grid[1] - grid[0])
    assert abs(mass.item() - 1.0) < 1e-3
    s = prior.sample(50_000)
    assert abs(s.mean().item() - (-0.7 / math.exp(-0.4))) < 0.05


def vamp(k=7, dim=3, shape=(1, 4, 4), low=0.0, high=1.0, **kw):
    """A VampPrior attached to a small random MLP encoder (with a spread-out posterior)."""
    torch.manual_seed(0)
    net = MLPEncoder(shape, 2 * dim, hidden=[16])

    def encode(x):
        mu, logvar = net(x).chunk(2, -1)
        return 3.0 * mu, logvar

    prior = VampPrior(dim, n_components=k, **kw)
    prior.attach(EncoderAccess(encode, shape, low, high))
    return prior, encode


def test_vamp_log_prob_is_the_mean_of_the_posteriors_at_the_pseudo_inputs():
    prior, encode = vamp(init_mean=0.5, init_std=0.3)
    u = prior.pseudo_inputs().detach()
    mu, logvar = encode(u)
    q = D.Independent(D.Normal(mu.detach(), (0.5 * logvar.detach()).exp()), 1)  # K posteriors
    z = 3.0 * torch.randn(50, 3)
    brute = torch.logsumexp(q.log_prob(z[:, None, :]), dim=1) - math.log(7)
    torch.testing.assert_close(prior.log_prob(z).detach(), brute, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 1.0)])
def test_vamp_pseudo_inputs_stay_in_the_input_range_and_learn(low, high):
    prior, _ = vamp(low=low, high=high, init_mean=0.5, init_std=2.0)  # many raw values clip
    u = prior.pseudo_inputs()
    assert u.shape == (7, 1, 4, 4) and u.min() >= low and u.max() <= high
    assert (u == low).any() and (u == high).any() and ((u > low) & (u < high)).any()
    prior.log_prob(torch.randn(5, 3)).sum().backward()
    grad = prior.pseudo_raw.grad
    inside = (prior.pseudo_raw > 0) & (prior.pseudo_raw < 1)
    assert grad[inside].abs().sum() > 0 and (grad[~inside] == 0).all()  # hard-tanh


def test_vamp_samples_follow_the_mixture():
    prior, encode = vamp(k=3, dim=2, init_mean=0.5, init_std=0.4)
    with torch.no_grad():
        mu, logvar = encode(prior.pseudo_inputs())
        z = prior.sample(60_000)
    assert z.shape == (60_000, 2)
    var = logvar.exp()
    mean = mu.mean(0)  # uniform weights
    second = (var + mu.square()).mean(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(z.square().mean(0), second, atol=0.1 * second.max().item(), rtol=0)


def test_vamp_needs_the_encoder_and_a_positive_k():
    with pytest.raises(RuntimeError, match="attach"):
        VampPrior(2, n_components=3).log_prob(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="n_components"):
        VampPrior(2, n_components=0)
