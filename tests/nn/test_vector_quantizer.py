"""`VectorQuantizer`: nearest codes, straight-through gradients, the two VQ losses, and
the codebook-use perplexity, against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import entropy

from gmlab.nn.vector_quantizer import VectorQuantizer, perplexity


def test_codebook_starts_uniform_in_plus_minus_one_over_k():
    torch.manual_seed(0)
    vq = VectorQuantizer(128, 256)
    values = vq.codebook.detach()
    assert values.shape == (128, 256)
    assert values.abs().max() <= 1 / 128
    assert values.min() < -0.95 / 128 and values.max() > 0.95 / 128  # fills the range
    assert values.mean().abs() < 0.05 / 128 and values.std() == pytest.approx(
        (2 / 128) / math.sqrt(12), rel=0.02
    )


def test_nearest_code_and_lookup_match_brute_force():
    torch.manual_seed(1)
    vq = VectorQuantizer(17, 5)
    with torch.no_grad():
        vq.codebook.normal_()
    z = torch.randn(3, 5, 4, 6)
    codes = vq.nearest(z)
    points = z.permute(0, 2, 3, 1).reshape(-1, 5)
    brute = torch.cdist(points.double(), vq.codebook.double()).argmin(1)
    assert torch.equal(codes.flatten(), brute)
    assert codes.shape == (3, 4, 6) and codes.dtype == torch.long
    looked_up = vq.lookup(codes)
    assert looked_up.shape == z.shape
    assert torch.equal(looked_up.permute(0, 2, 3, 1).reshape(-1, 5), vq.codebook[brute].detach())


def test_straight_through_value_gradient_and_losses():
    torch.manual_seed(2)
    vq = VectorQuantizer(7, 3)
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = vq(z_e)
    z_q = vq.lookup(vq.nearest(z_e)).detach()
    assert torch.allclose(out.z, z_q)  # forward: the codes
    weights = torch.randn_like(z_e)
    (grad,) = torch.autograd.grad((out.z * weights).sum(), z_e, retain_graph=True)
    assert torch.equal(grad, weights)  # backward: identity to the encoder output
    expected = (z_q - z_e.detach()).square().mean()
    assert out.codebook_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.commitment_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the codebook loss moves only the codebook, the commitment loss only the encoder
    g_code = torch.autograd.grad(
        out.codebook_loss, [z_e, vq.codebook], allow_unused=True, retain_graph=True
    )
    g_commit = torch.autograd.grad(out.commitment_loss, [z_e, vq.codebook], allow_unused=True)
    assert g_code[0] is None and g_code[1].abs().sum() > 0
    assert g_commit[1] is None
    assert torch.allclose(g_commit[0], 2 * (z_e - z_q).detach() / z_e.numel())


def test_perplexity_is_exp_entropy_of_the_code_histogram():
    assert perplexity(torch.zeros(50, dtype=torch.long), 8).item() == pytest.approx(1.0)
    assert perplexity(torch.arange(8).repeat(5), 8).item() == pytest.approx(8.0, rel=1e-6)
    codes = torch.randint(0, 12, (1000,), generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(codes, minlength=12).numpy()
    assert perplexity(codes, 12).item() == pytest.approx(math.exp(entropy(counts)), rel=1e-5)
