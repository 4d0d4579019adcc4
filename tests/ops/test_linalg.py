"""gmlab.ops.cholesky_float64_retry against torch.linalg.cholesky, and its clear error for
matrices that are not positive definite even in float64."""

import pytest
import torch

from gmlab.distributions.lowrank import LowRankGaussians
from gmlab.errors import GmlabError, SingularCovarianceError
from gmlab.ops import cholesky_float64_retry


def spd(k=3, n=4, seed=0, dtype=torch.float64):
    a = torch.randn(k, n, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return a @ a.mT + n * torch.eye(n, dtype=dtype)


def test_well_conditioned_matrices_factor_as_torch_does():
    mats = spd(dtype=torch.float32)
    chol = cholesky_float64_retry(lambda dtype: mats.to(dtype), torch.float32)
    assert chol.dtype == torch.float32
    torch.testing.assert_close(chol, torch.linalg.cholesky(mats))


def test_indefinite_matrices_are_named_in_a_clear_error():
    mats = spd(k=5)
    mats[1] = -mats[1]
    mats[3, 0, 0] = float("nan")
    with pytest.raises(SingularCovarianceError) as err:
        cholesky_float64_retry(lambda dtype: mats.to(dtype), torch.float32, "thing", "Fix it.")
    assert str(err.value) == "thing 1, 3 (2 of 5) not positive definite even in float64. Fix it."
    assert isinstance(err.value, GmlabError) and isinstance(err.value, FloatingPointError)


def test_lowrank_component_with_vanishing_noise_gets_a_noise_floor_hint():
    """exp(-log_noise) overflows float32 for a noise variance of e^-200: the capacitance
    matrix of that component is inf/NaN in float64 too, and the error names it."""
    k, d, l = 4, 6, 2
    g = torch.Generator().manual_seed(1)
    means, factors = torch.randn(k, d, generator=g), torch.randn(k, d, l, generator=g)
    log_noise = torch.zeros(k, d)
    log_noise[2] = -200.0
    with pytest.raises(SingularCovarianceError, match=r"component 2 \(1 of 4\).*noise floor"):
        LowRankGaussians.from_params(means, factors, log_noise)
    log_noise[2] = 0.0
    assert LowRankGaussians.from_params(means, factors, log_noise).log_prob(means).isfinite().all()


def test_float64_matrices_are_factored_once_and_their_failures_named():
    """No float64 retry of what is float64 already: `build` runs once, and the indices of
    the matrices that are not positive definite come in order, the first ten listed."""
    mats = spd(k=14)
    bad = [0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13]
    mats[bad] = -mats[bad]
    calls = []

    def build(dtype):
        calls.append(dtype)
        return mats.to(dtype)

    with pytest.raises(SingularCovarianceError) as err:
        cholesky_float64_retry(build, torch.float64, "M-step matrix of component")
    assert calls == [torch.float64]
    assert str(err.value) == (
        "M-step matrix of component 0, 2, 3, 4, 5, 6, 7, 8, 9, 11 ... (11 of 14) not positive "
        "definite even in float64."
    )
    good = spd(k=3)
    chol = cholesky_float64_retry(lambda dtype: good.to(dtype), torch.float64)
    torch.testing.assert_close(chol @ chol.mT, good)
