"""gmlab.distributions.lowrank against dense torch.distributions.MultivariateNormal."""

import pytest
import torch
from torch.distributions import MultivariateNormal

from gmlab.distributions.lowrank import LowRankGaussians, lowrank_covariance, lowrank_log_prob

F64 = torch.float64


def random_params(k=4, d=7, l=3, isotropic=False, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=dtype)
    factors = torch.randn(k, d, l, generator=g, dtype=dtype)
    log_noise = torch.randn(k, 1 if isotropic else d, generator=g, dtype=dtype) * 0.5 - 1
    return means, factors, log_noise


def dense_log_prob(x, means, factors, log_noise):
    cov = lowrank_covariance(factors, log_noise)
    return MultivariateNormal(means, covariance_matrix=cov).log_prob(x[:, None, :])


@pytest.mark.parametrize("isotropic", [False, True])
@pytest.mark.parametrize("l", [0, 1, 3])
def test_log_prob_matches_dense_gaussians(isotropic, l):
    means, factors, log_noise = random_params(l=l, isotropic=isotropic)
    x = torch.randn(50, 7, dtype=F64) * 2
    got = lowrank_log_prob(x, means, factors, log_noise)
    assert got.shape == (50, 4)
    torch.testing.assert_close(got, dense_log_prob(x, means, factors, log_noise))


def test_chunking_does_not_change_the_result():
    means, factors, log_noise = random_params()
    x = torch.randn(101, 7, dtype=F64)
    whole = lowrank_log_prob(x, means, factors, log_noise)
    torch.testing.assert_close(lowrank_log_prob(x, means, factors, log_noise, chunk_size=8), whole)


def test_gradients_match_dense_gaussians():
    means, factors, log_noise = (t.requires_grad_() for t in random_params(k=2, d=5, l=2))
    x = torch.randn(9, 5, dtype=F64)
    lowrank_log_prob(x, means, factors, log_noise).sum().backward()
    grads = [t.grad.clone() for t in (means, factors, log_noise)]
    for t in (means, factors, log_noise):
        t.grad = None
    dense_log_prob(x, means, factors, log_noise).sum().backward()
    for got, t in zip(grads, (means, factors, log_noise), strict=True):
        torch.testing.assert_close(got, t.grad)


def test_float32_stable_with_constant_coordinates_and_tiny_noise():
    """Pixel-like data far from 0 with a constant coordinate of variance 1e-10: float32
    stays within a small absolute error of float64 (the shift removes the cancellation)."""
    means, factors, log_noise = random_params(k=3, d=20, l=2)
    means = means * 0.1 + 0.5
    factors = factors * 0.05
    means[:, 0] = 0.75  # a constant pixel in every component
    factors[:, 0] = 0.0
    log_noise[:, 0] = torch.log(torch.tensor(1e-10, dtype=F64))
    log_noise[:, 1:] = torch.log(torch.tensor(1e-3, dtype=F64))
    x = means[torch.arange(40) % 3] + 0.03 * torch.randn(40, 20, dtype=F64)
    x[:, 0] = 0.75
    ref = lowrank_log_prob(x, means, factors, log_noise)
    got = lowrank_log_prob(*(t.float() for t in (x, means, factors, log_noise)))
    assert torch.isfinite(got).all()
    assert (got.double() - ref).abs().max() < 0.05


def test_float32_factors_with_nearly_collinear_columns_over_a_tiny_noise_floor():
    """A_k^T D^-1 A_k ~ 1e9 with nearly parallel columns (a component fitted to a handful
    of points, as seen on CelebA-sized data): I + A^T D^-1 A is positive definite, but in
    float32 its rounding (~1e2) swamps the identity and the Cholesky failed. It is now
    redone in float64 when float32 fails: the float32 log-densities are finite, assign every
    point to the component float64 does, and are as accurate as float32 allows where the
    Mahalanobis distance is the difference of two terms ~1e9 (x^T D^-1 x - |P^T x|^2)."""
    g = torch.Generator().manual_seed(0)
    k, d, l = 3, 3000, 4
    base = 0.5 * torch.randn(k, d, 1, generator=g, dtype=F64)
    factors = base + 1e-4 * torch.randn(k, d, l, generator=g, dtype=F64)
    means = torch.rand(k, d, generator=g, dtype=F64)
    log_noise = torch.full((k, d), -6 * torch.log(torch.tensor(10.0)).item(), dtype=F64)
    comp = torch.arange(12) % k  # points drawn from the components
    z = torch.randn(12, l, 1, generator=g, dtype=F64)
    x = means[comp] + (factors[comp] @ z).squeeze(-1)
    x = x + 1e-3 * torch.randn(12, d, generator=g, dtype=F64)
    ref = lowrank_log_prob(x, means, factors, log_noise)
    got = lowrank_log_prob(*(t.float() for t in (x, means, factors, log_noise))).double()
    assert torch.isfinite(got).all()
    assert torch.equal(got.argmax(1), ref.argmax(1)) and torch.equal(ref.argmax(1), comp)
    cancelled = ((x[:, None] - means).square() / log_noise.exp()).sum(-1)  # [12, K]
    assert ((got - ref).abs() / cancelled).max() < 1e-3


def test_precomputed_object_exposes_projections():
    means, factors, log_noise = random_params()
    g = LowRankGaussians.from_params(means, factors, log_noise)
    x = torch.randn(6, 7, dtype=F64)
    lp, y_raw = g.project(x)
    torch.testing.assert_close(lp, g.log_prob(x))
    torch.testing.assert_close(y_raw, torch.einsum("nd,kdl->nkl", x - g.shift, g.proj))
    cov = lowrank_covariance(factors, log_noise)
    torch.testing.assert_close(g.log_det, torch.logdet(cov))


def test_shape_errors_are_clear():
    means, factors, log_noise = random_params()
    with pytest.raises(ValueError, match="factors must be"):
        lowrank_log_prob(torch.zeros(2, 7, dtype=F64), means, factors[:, :5], log_noise)
    with pytest.raises(ValueError, match="log_noise must be"):
        lowrank_log_prob(torch.zeros(2, 7, dtype=F64), means, factors, log_noise[:, :3])
    with pytest.raises(ValueError, match=r"x must be \[N, 7\]"):
        lowrank_log_prob(torch.zeros(2, 6, dtype=F64), means, factors, log_noise)
