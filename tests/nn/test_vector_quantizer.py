"""`VectorQuantizer` and `EMAVectorQuantizer`: nearest codes, straight-through gradients, the
VQ losses, the moving-average update by hand, dead-code revival, k-means init, old state, and
the codebook-use perplexity, against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import entropy

from gmlab.errors import ConfigError
from gmlab.nn.ema_quantizer import EMAVectorQuantizer
from gmlab.nn.vector_quantizer import VectorQuantizer, perplexity
from gmlab.ops.kmeans import kmeans


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
    assert perplexity(torch.tensor([50, 0, 0, 0])).item() == pytest.approx(1.0)
    assert perplexity(torch.full((8,), 5)).item() == pytest.approx(8.0, rel=1e-6)
    codes = torch.randint(0, 12, (1000,), generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(codes, minlength=12)
    assert perplexity(counts).item() == pytest.approx(math.exp(entropy(counts.numpy())), rel=1e-5)


def test_counts_and_losses_of_the_forward_pass():
    torch.manual_seed(4)
    vq = VectorQuantizer(6, 2)
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(3, 2, 2, 5)
    for mode in (vq.eval(), vq.train()):
        out = mode(z_e)
        brute = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, 2), vq.codebook.detach()).argmin(1)
        assert torch.equal(out.codes.flatten(), brute)
        assert torch.equal(out.counts, torch.bincount(brute, minlength=6))
        assert out.revived == 0


def test_ema_update_equals_the_hand_computation():
    """N_k <- g N_k + (1-g) n_k, m_k <- g m_k + (1-g) s_k, e_k = m_k / N~_k with Laplace
    smoothing, written out per code on a toy batch of four 2-D vectors and three codes."""
    decay, eps = 0.9, 0.1
    vq = EMAVectorQuantizer(3, 2, decay=decay, eps=eps).train()
    start = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    vq.set_codes(torch.arange(3), start, torch.ones(3))
    z = torch.tensor([[0.1, -0.2], [0.9, 1.2], [1.1, 0.8], [-0.3, 0.1]])  # codes 0, 1, 1, 0
    out = vq(z.T.reshape(1, 2, 1, 4))
    assert out.codes.flatten().tolist() == [0, 1, 1, 0]
    assert out.counts.tolist() == [2, 2, 0]
    size, sums = [], []
    for k, members in enumerate([[0, 3], [1, 2], []]):
        size.append(decay * 1.0 + (1 - decay) * len(members))
        s_k = sum((z[i] for i in members), torch.zeros(2))
        sums.append(decay * start[k] * 1.0 + (1 - decay) * s_k)
    total = sum(size)
    expected = torch.stack(
        [m / ((n + eps) / (total + 3 * eps) * total) for n, m in zip(size, sums, strict=True)]
    )
    assert torch.allclose(vq.cluster_size, torch.tensor(size))
    assert torch.allclose(vq.embed_sum, torch.stack(sums))
    assert torch.allclose(vq.codebook, expected, atol=1e-6)
    # the codebook takes no gradient: no codebook loss, the commitment term stays
    assert out.codebook_loss.item() == 0.0 and not vq.codebook.requires_grad
    z_q = start[out.codes.flatten()]
    assert out.commitment_loss.item() == pytest.approx((z - z_q).square().mean().item())
    before = vq.codebook.clone()
    vq.eval()(z.T.reshape(1, 2, 1, 4))
    assert torch.equal(vq.codebook, before)  # no update outside training


@pytest.mark.parametrize("cls", [VectorQuantizer, EMAVectorQuantizer])
@pytest.mark.parametrize("revive_from", ["random", "farthest"])
def test_revival_replaces_exactly_the_dead_codes(cls, revive_from):
    vq = cls(5, 2, dead_after=3, revive_from=revive_from).train()
    twin = cls(5, 2).train()  # the same without revival
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
    vq.set_codes(torch.arange(5), codes, torch.ones(5))
    twin.set_codes(torch.arange(5), codes, torch.ones(5))
    g = torch.Generator().manual_seed(0)
    near = torch.randn(40, 2, generator=g) * 0.5  # all nearest to code 0
    near[:10] += torch.tensor([10.0, 0.0])  # code 1 used too
    z = near.T.reshape(1, 2, 4, 10)
    history = []
    for _ in range(3):
        kept = vq.codebook.detach().clone()
        history.append(vq(z).revived)
        twin(z)
    assert history == [0, 0, 3]  # codes 2, 3, 4 unused for 3 steps
    new = vq.codebook.detach()
    assert torch.equal(new[:2], twin.codebook.detach()[:2])  # the used codes as without revival
    assert not torch.isin(new[2:], twin.codebook.detach()).all(1).any()  # the dead ones moved
    members = (new[2:, None, :] == near[None]).all(-1)  # [3, 40]: which batch vector
    assert (members.sum(1) == 1).all()  # each revived code is one of the batch's vectors
    assert members.any(0).sum() == 3  # three different ones
    if revive_from == "farthest":
        distance = torch.cdist(near, kept[:2]).min(1).values
        chosen = members.any(0).nonzero().flatten()
        assert set(chosen.tolist()) == set(distance.topk(3).indices.tolist())
    assert vq.unused_steps.tolist() == [0, 0, 0, 0, 0]
    assert vq(z).revived == 0  # revived codes get a fresh count of steps


def test_kmeans_init_is_ops_kmeans_of_the_first_batch():
    torch.manual_seed(5)
    z = torch.randn(4, 3, 5, 5) + torch.randint(0, 3, (4, 1, 5, 5)) * 4.0
    rows = z.permute(0, 2, 3, 1).reshape(-1, 3)
    centers, labels = kmeans(rows, 6, n_iter=7, seed=2)
    for cls in (VectorQuantizer, EMAVectorQuantizer):
        vq = cls(6, 3, init="kmeans", kmeans_iters=7, seed=2).eval()
        vq(z)
        assert not bool(vq.initialized)  # only training steps initialize
        out = vq.train()(z)
        if cls is VectorQuantizer:
            assert torch.equal(vq.codebook.detach(), centers)
        else:  # initialized, then one moving-average step from N_k = the cluster sizes
            sizes = torch.bincount(labels, minlength=6).float().clamp_min(1)
            assert torch.allclose(vq.cluster_size, 0.99 * sizes + 0.01 * out.counts)
        assert torch.equal(out.codes.flatten(), labels)  # the batch quantized by its centers
        kept = vq.codebook.detach().clone()
        vq(z + 1.0)
        assert bool(vq.initialized)
        if cls is VectorQuantizer:
            assert torch.equal(vq.codebook.detach(), kept)  # once only
    with pytest.raises(ConfigError, match="needs at least 200 encoder vectors"):
        VectorQuantizer(200, 3, init="kmeans").train()(z)


def test_checkpoints_without_the_new_state_load_as_trained_codebooks():
    """A gmlab 0.1 VQ-VAE checkpoint held the codebook alone; the checkpoint converter
    (gmlab.models.compat) gives it the state a trained codebook implies."""
    from gmlab.models.compat import codebook_state

    codebook = torch.randn(4, 2)  # all a gradient quantizer held before
    old = {"quantizer.codebook": codebook.clone()}
    codebook_state(old)
    quantizer = VectorQuantizer(4, 2, init="kmeans")
    quantizer.load_state_dict({k.removeprefix("quantizer."): v for k, v in old.items()})
    assert torch.equal(quantizer.codebook.detach(), codebook) and bool(quantizer.initialized)
    assert quantizer.unused_steps.tolist() == [0] * 4
    with pytest.raises(RuntimeError, match="cluster_size"):  # moving averages need theirs
        EMAVectorQuantizer(4, 2, init="kmeans").load_state_dict({"codebook": codebook})


def test_bad_options_are_config_errors():
    for options, match in [
        ({"init": "normal"}, "init must be uniform or kmeans"),
        ({"revive_from": "nearest"}, "revive_from must be random or farthest"),
        ({"dead_after": 0}, "dead_after must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            VectorQuantizer(4, 2, **options)
    with pytest.raises(ConfigError, match="decay must be in"):
        EMAVectorQuantizer(4, 2, decay=1.0)
