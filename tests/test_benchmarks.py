"""The benchmarks' own claims that the tests can check cheaply: a reference implementation
timed against gmlab must compute the same function."""

import pytest
import torch

from benchmarks import bench_realnvp

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_realnvp_reference_and_gmlab_share_weights_and_loss():
    """bench_realnvp times the reference and gmlab's model on 'an identical loss': with the
    weights copied across, both give the same bits/dim on the same dequantization noise
    (and bf16 s/t nets stay within bf16 rounding of it)."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, *bench_realnvp.SHAPE), dtype=torch.uint8)
    theirs, ours, ours_bf16 = bench_realnvp.same_weights_losses(x)
    assert 7.0 < theirs < 12.0  # a randomized flow: far from trained, far from degenerate
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert ours_bf16 == pytest.approx(theirs, abs=2e-2)
