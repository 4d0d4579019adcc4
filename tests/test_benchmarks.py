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


def test_vqvae_broadcast_search_finds_the_same_codes():
    """bench_vqvae times gmlab's nearest-code search against the broadcast [N, K, D] form:
    both must return the same codes (checked here on random codebooks and inputs)."""
    from benchmarks.bench_vqvae import broadcast_nearest
    from gmlab.nn.vector_quantizer import VectorQuantizer

    torch.manual_seed(1)
    vq = VectorQuantizer(64, 16)
    with torch.no_grad():
        vq.codebook.normal_()
        z_e = torch.randn(4, 16, 5, 5)
        assert torch.equal(vq.nearest(z_e), broadcast_nearest(z_e, vq.codebook))
