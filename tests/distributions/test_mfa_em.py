"""EM for MFA / MPPCA against closed-form and scikit-learn references."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.mixture import GaussianMixture
from support.em import stats_of

from gmlab.distributions.mfa import (
    MixtureOfFactorAnalyzers,
    SufficientStats,
    e_step,
    init_kmeans,
    init_rnd_samples,
    m_step,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    x = torch.from_numpy(load_digits().data).to(F64) / 16  # [1797, 64], constant borders
    return x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)


def run_em(m, x, passes, batch=None, floor=1e-9, min_count=1e-3, reg=0.0):
    history, reseeded = [], 0
    for _ in range(passes):
        g, st = stats_of(m, x, batch)
        history.append(float(st.log_lik) / len(x))
        new = m_step(st, g, m.noise, noise_floor=floor, min_count=min_count, noise_reg=reg)
        reseeded += int(new.pop("reseeded").sum())
        m.set_params(**new)
    return history, reseeded


def make(x, k, l, noise, init="rnd", seed=0, dtype=F64):
    m = MixtureOfFactorAnalyzers(k, x.shape[1], l, noise).to(dtype)
    fn = init_rnd_samples if init == "rnd" else init_kmeans
    m.set_params(**fn(x.to(dtype), k, l, seed=seed))
    return m


def factor_data(isotropic_noise, n=1500, d=12, l=3, seed=0):
    """Points from one factor analyzer. EM converges linearly at a rate set by the noise
    relative to the factor variances (slowly when the noise is tiny), so keep them close."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, l, generator=g, dtype=F64) * torch.tensor([1.0, 0.7, 0.5], dtype=F64)
    if isotropic_noise:
        noise = torch.full((d,), 0.5, dtype=F64)
    else:
        noise = torch.rand(d, generator=g, dtype=F64) * 0.5 + 0.3
    z = torch.randn(n, l, generator=g, dtype=F64)
    return 1.0 + z @ a.T + noise.sqrt() * torch.randn(n, d, generator=g, dtype=F64)


def test_k1_mppca_converges_to_closed_form_ppca():
    x = factor_data(isotropic_noise=True)
    m = MixtureOfFactorAnalyzers(1, 12, 3, "isotropic").to(F64)
    m.set_params(**init_rnd_samples(x, 1, 3, samples_per_component=100))
    run_em(m, x, 400)
    # closed-form ML PPCA from scikit-learn's PCA, rescaled from its N-1 normalisation to
    # the maximum-likelihood N: W = U (Lambda - sigma^2)^1/2, sigma^2 = mean dropped eigenvalue
    n = len(x)
    pca = PCA(n_components=3, svd_solver="full").fit(x.numpy())
    lam = pca.explained_variance_ * (n - 1) / n
    sigma2 = pca.noise_variance_ * (n - 1) / n
    w = pca.components_.T * np.sqrt(lam - sigma2)
    ref = multivariate_normal(pca.mean_, w @ w.T + sigma2 * np.eye(12)).logpdf(x.numpy())
    np.testing.assert_allclose(m.log_prob(x).detach().numpy(), ref, rtol=0, atol=1e-6)
    # and scikit-learn's own score agrees up to that normalisation
    assert abs(m.log_prob(x).mean().item() - pca.score(x.numpy())) < 1e-3


def test_k1_mfa_matches_factor_analysis():
    x = factor_data(isotropic_noise=False)
    m = MixtureOfFactorAnalyzers(1, 12, 3, "diagonal").to(F64)
    m.set_params(**init_rnd_samples(x, 1, 3, samples_per_component=100))
    run_em(m, x, 100)
    fa = FactorAnalysis(n_components=3, tol=1e-8, max_iter=5000, svd_method="lapack")
    fa.fit(x.numpy())
    assert abs(m.log_prob(x).mean().item() - fa.score(x.numpy())) < 1e-6
    cov = m.factors[0] @ m.factors[0].T + torch.diag(m.noise_variance[0])
    np.testing.assert_allclose(cov.detach().numpy(), fa.get_covariance(), atol=1e-3)


@pytest.mark.parametrize(("steps", "reg"), [(1, 0.0), (3, 0.0), (3, 1e-3)])
def test_zero_factors_diagonal_em_equals_sklearn_diag_gmm(digits, steps, reg):
    x = digits[:500]
    k, d = 4, x.shape[1]
    g = torch.Generator().manual_seed(1)
    means = x[torch.randperm(len(x), generator=g)[:k]]
    var = torch.rand(k, d, generator=g, dtype=F64) * 0.05 + 0.02
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    m = MixtureOfFactorAnalyzers(k, d, 0, "diagonal").to(F64)
    m.set_params(means=means, noise_variance=var, weights=weights)
    run_em(m, x, steps, floor=1e-300, reg=reg)  # noise_reg is sklearn's reg_covar
    gmm = GaussianMixture(
        k,
        covariance_type="diag",
        max_iter=steps,
        tol=0.0,
        reg_covar=reg,
        weights_init=weights.numpy(),
        means_init=means.numpy(),
        precisions_init=(1 / var).numpy(),
    )
    with pytest.warns(Warning):  # sklearn: "did not converge" after `steps` iterations
        gmm.fit(x.numpy())
    np.testing.assert_allclose(m.means.detach().numpy(), gmm.means_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m.noise_variance.detach().numpy(), gmm.covariances_, rtol=1e-8)
    np.testing.assert_allclose(m.weights.detach().numpy(), gmm.weights_, rtol=1e-9)


def test_tiny_factors_approach_the_diagonal_em_step(digits):
    x = digits[:400]
    m0 = make(x, 3, 0, "diagonal")
    m1 = MixtureOfFactorAnalyzers(3, x.shape[1], 2, "diagonal").to(F64)
    m1.set_params(
        means=m0.means,
        noise_variance=m0.noise_variance,
        weights=m0.weights,
        factors=torch.full((3, x.shape[1], 2), 1e-7, dtype=F64),
    )
    run_em(m0, x, 1)
    run_em(m1, x, 1)
    torch.testing.assert_close(m1.means, m0.means, rtol=0, atol=1e-9)
    torch.testing.assert_close(m1.noise_variance, m0.noise_variance, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
@pytest.mark.parametrize("init", ["rnd", "kmeans"])
def test_em_never_decreases_the_log_likelihood(digits, noise, init):
    x = digits[:800]
    m = make(x, 6, 3, noise, init=init)
    history, reseeded = run_em(m, x, 15, batch=128)
    assert reseeded == 0
    diffs = np.diff(history)
    assert diffs.min() > -1e-8 * abs(history[-1]), diffs
    assert history[-1] > history[0] + 1


def test_float32_em_is_close_to_float64(digits):
    x = digits[:800]
    m64 = make(x, 5, 3, "diagonal")
    m32 = make(x, 5, 3, "diagonal").float()
    h64, _ = run_em(m64, x, 8, batch=200)
    h32, _ = run_em(m32, x.float(), 8, batch=200)
    np.testing.assert_allclose(h32, h64, rtol=1e-3)


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_blocked_e_step_statistics_equal_brute_force_sums(digits, noise):
    """Blocks of 37 rows (not dividing the batch), float32: every statistic against its
    definition with responsibilities from dense scipy densities (float64)."""
    x64 = digits[:300]
    m = make(x64, 4, 2, noise).float().requires_grad_(False)
    x = x64.float()
    g = m.gaussians()
    st = SufficientStats.zeros(4, 64, 2, noise == "isotropic")
    ll = e_step(x, g, m.log_weights, st, block_rows=37)
    cov = (m.factors @ m.factors.mT + torch.diag_embed(m.noise_variance)).double()
    log_comp = torch.stack(
        [
            torch.from_numpy(multivariate_normal(m.means[k].double(), cov[k]).logpdf(x64.numpy()))
            for k in range(4)
        ],
        1,
    )
    joint = log_comp + m.log_weights.double()
    r = torch.softmax(joint, 1)
    xc = x64 - g.shift.double()
    proj = xc @ g.proj.double().permute(1, 0, 2).reshape(64, -1)  # [n, K l]
    t = torch.einsum("nk,nd,nkl->kdl", r, xc, proj.view(-1, 4, 2))
    sq = xc.square().sum(1, keepdim=True) if noise == "isotropic" else xc.square()
    torch.testing.assert_close(ll.double(), torch.logsumexp(joint, 1), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(st.s0, r.sum(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(st.s1, r.T @ xc, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(st.s2, r.T @ sq, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(st.t, t, rtol=1e-4, atol=2e-3)
    assert float(st.count) == 300 and len(st.worst_ll) == 4
    torch.testing.assert_close(st.worst_ll, torch.sort(ll).values[:4])


@pytest.mark.parametrize("log_r", [-50.0, -60.0])
def test_responsibilities_below_two_to_the_minus_80_are_dropped(log_r):
    """Two unit Gaussians on a line, one point at the first mean: the second component's
    log responsibility is -mu^2 / 2 - log(1 + e^(-mu^2 / 2)). Above the floor (-80 ln 2 =
    -55.45) it is kept to float32 precision; below it is exactly 0 (no subnormals)."""
    mu = (-2 * log_r) ** 0.5
    m = MixtureOfFactorAnalyzers(2, 1, 0).requires_grad_(False)
    m.means[1] = mu
    st = SufficientStats.zeros(2, 1, 0, False)
    e_step(torch.zeros(1, 1), m.gaussians(), m.log_weights, st)
    expected = torch.tensor(log_r, dtype=F64).exp() / (1 + torch.tensor(log_r, dtype=F64).exp())
    if log_r > -80 * np.log(2):
        torch.testing.assert_close(st.s0[1], expected, rtol=1e-5, atol=0)
    else:
        assert float(st.s0[1]) == 0.0 and float(expected) > 0
    torch.testing.assert_close(st.s0.sum(), torch.tensor(1.0, dtype=F64))


def test_statistics_add_up_over_batches(digits):
    x = digits[:300]
    m = make(x, 3, 2, "diagonal")
    _, whole = stats_of(m, x)
    _, parts = stats_of(m, x, batch=64)
    torch.testing.assert_close(parts.flat(), whole.flat())
    copy = SufficientStats.zeros(3, 64, 2, False)
    copy.load_flat(parts.flat())
    torch.testing.assert_close(copy.t, parts.t)


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_degenerate_data_gives_no_nan(noise):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 10, generator=g)
    x = base[torch.randint(6, (60,), generator=g)]  # duplicated points
    x[:, 0] = 0.0  # constant coordinates, like MNIST's borders
    x[:, 1] = 0.75
    for k in (3, 12):  # 12 > the 6 distinct points the data supports
        for init in ("rnd", "kmeans"):
            m = make(x, k, 2, noise, init=init, dtype=torch.float32)
            history, _ = run_em(m, x, 6, floor=1e-6, min_count=1.0)
            for p in m.parameters():
                assert torch.isfinite(p).all()
            assert np.isfinite(history).all()
            assert torch.isfinite(m.log_prob(x)).all()
            assert (m.noise_variance >= 1e-6 * (1 - 1e-5)).all()


def test_empty_components_are_reseeded_at_badly_explained_points():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(100, 3, generator=g, dtype=F64),
            30 + torch.randn(5, 3, generator=g, dtype=F64),
        ]
    )
    m = MixtureOfFactorAnalyzers(3, 3, 1, "diagonal").to(F64)
    far = torch.tensor([[-50.0, -50, -50], [0.1, 0, 0], [-0.1, 0, 0]], dtype=F64)
    m.set_params(
        means=far,
        factors=torch.full((3, 3, 1), 0.1, dtype=F64),
        noise_variance=torch.ones(3, 3, dtype=F64),
        weights=torch.ones(3, dtype=F64),
    )
    g_, st = stats_of(m, x)
    new = m_step(st, g_, "diagonal", min_count=1.0)
    assert new["reseeded"].tolist() == [True, False, False]
    assert new["means"][0].min() > 25  # moved onto one of the outlying points
    torch.testing.assert_close(new["weights"].sum(), torch.tensor(1.0, dtype=F64))


def test_feature_sampling_e_step_runs(digits):
    from gmlab.distributions.lowrank import LowRankGaussians

    x = digits[:200]
    m = make(x, 3, 2, "diagonal")
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:13]
    g = m.gaussians()
    sub = LowRankGaussians.from_params(
        m.means[:, idx], m.factors[:, idx], m.log_noise[:, idx], g.shift[idx]
    )
    st = SufficientStats.zeros(3, 64, 2, False)
    ll = e_step(x, g, m.log_weights.detach(), st, resp_gauss=sub, resp_index=idx)
    torch.testing.assert_close(ll, torch.logsumexp(sub.log_prob(x[:, idx]) + m.log_weights, 1))
    new = m_step(st, g, "diagonal")
    assert all(torch.isfinite(v).all() for v in new.values() if v.is_floating_point())
