"""Flow pieces: exact inverses, and log-dets against brute-force Jacobians (float64)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch.autograd.functional import jacobian

from gmlab.errors import ShapeError
from gmlab.nn.flows import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    Composition,
    FactorOut,
    Logit,
    ResNet,
    Squeeze,
    Unsqueeze,
    WeightNormConv2d,
    checkerboard,
    recalibrate_batch_norm,
    running_statistics,
    squeeze2d,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomize(flow: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (identity) initial value, so that s and t are not zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def brute_log_det(flow, x: torch.Tensor) -> torch.Tensor:
    """[B] log|det J| of the per-sample map, from the full Jacobian (float64)."""
    out = []
    for xi in x:

        def f(v, xi=xi):
            y, _ = flow(v.reshape(1, *xi.shape))
            return y.reshape(-1)

        j = jacobian(f, xi.reshape(-1))
        out.append(torch.linalg.slogdet(j)[1])
    return torch.stack(out)


def coupling(mask: str, parity: int, channels: int = 4) -> AffineCoupling:
    return randomize(AffineCoupling(channels, mask, parity, num_blocks=1, filters=8), seed=parity)


def batch_norm(channels: int = 4) -> BatchNormFlow:
    bn = randomize(BatchNormFlow(channels))
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return bn


def act_norm(channels: int = 4) -> ActNorm:
    an = ActNorm(channels)
    an(torch.randn(16, channels, 4, 4) * 3 + 1)  # data-dependent init
    return randomize(an)


# (name, factory, input maker) of every bijective piece; inputs are float64 [2, 4, 4, 4]
def _unit(shape):
    return torch.rand(shape, dtype=torch.float64) * 0.98 + 0.01


def _real(shape):
    return torch.randn(shape, dtype=torch.float64)


BLOCKS = {
    "logit": (lambda: Logit(0.05), _unit),
    "logit_alpha0": (lambda: Logit(0.0), _unit),
    "checkerboard0": (lambda: coupling("checkerboard", 0), _real),
    "checkerboard1": (lambda: coupling("checkerboard", 1), _real),
    "channel0": (lambda: coupling("channel", 0), _real),
    "channel1": (lambda: coupling("channel", 1), _real),
    "squeeze": (Squeeze, _real),
    "unsqueeze": (Unsqueeze, _real),
    "factor_out": (lambda: FactorOut(coupling("checkerboard", 0, channels=2)), _real),
    "batch_norm": (batch_norm, _real),
    "act_norm": (act_norm, _real),
    "composition": (
        lambda: Composition(
            Logit(0.1), coupling("checkerboard", 1), Squeeze(), coupling("channel", 0, 16)
        ),
        _unit,
    ),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_inverse_of_forward_is_identity(name, mode):
    torch.manual_seed(1)
    make, sample = BLOCKS[name]
    flow = make().train(mode == "train")
    x = sample((8, 4, 4, 4)).float()
    y, log_det = flow(x)
    x_back, log_det_inv = flow.inverse(y)
    assert log_det.shape == (8,) and log_det.dtype == torch.float32
    assert torch.allclose(x_back, x, atol=1e-4)
    assert torch.allclose(log_det_inv, -log_det, atol=1e-3, rtol=1e-5)
    # and the other way round: forward(inverse(z)) == z
    z = y.detach() + 0.01 * torch.randn_like(y) if name.startswith("logit") else y.detach()
    x2, _ = flow.inverse(z)
    assert torch.allclose(flow(x2)[0], z, atol=1e-4)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_log_det_matches_brute_force_jacobian(name):
    torch.manual_seed(2)
    make, sample = BLOCKS[name]
    flow = make().double().eval()  # eval: batch norm is then a per-sample bijection
    x = sample((2, 4, 4, 4))
    y, log_det = flow(x)
    assert log_det.dtype == torch.float64
    expected = brute_log_det(flow, x)
    assert torch.allclose(log_det, expected, atol=1e-8, rtol=1e-8), (log_det, expected)
    _, log_det_inv = flow.inverse(y)
    assert torch.allclose(log_det_inv, -expected, atol=1e-8, rtol=1e-8)


def test_batch_norm_training_log_det_treats_batch_statistics_as_constants():
    torch.manual_seed(3)
    bn = batch_norm().double()
    x = torch.randn(16, 4, 3, 3, dtype=torch.float64) * 2 + 1
    _, log_det = bn.train()(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    frozen = BatchNormFlow(4).double().eval()
    frozen.load_state_dict(bn.state_dict())
    frozen.running_mean.copy_(mean)
    frozen.running_var.copy_(var)
    assert torch.allclose(log_det[:2], brute_log_det(frozen, x[:2]), atol=1e-8)
    assert torch.allclose(frozen(x)[0], bn.train()(x)[0], atol=1e-10)


def test_batch_norm_running_statistics_follow_the_data():
    bn = BatchNormFlow(2, momentum=0.5)
    x = torch.randn(256, 2, 4, 4) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + 3
    for _ in range(20):
        bn(x)
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, x.var((0, 2, 3), unbiased=False), atol=1e-4)


def test_actnorm_data_dependent_init_whitens_the_first_batch_only():
    an = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([3.0, 0.1, 1.0]).view(1, 3, 1, 1) - 2
    y, log_det = an(x)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.allclose(
        log_det, -25 * torch.log(x.std((0, 2, 3), unbiased=False)).sum(), atol=1e-3
    )
    before = an.state_dict()
    an(x * 10)  # no second initialization
    assert all(torch.equal(v, an.state_dict()[k]) for k, v in before.items())
    fresh = ActNorm(3).eval()
    fresh.load_state_dict(before)
    assert bool(fresh.initialized)


def test_squeeze_layout_against_explicit_indexing():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 12, 2, 3)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[:, (2 * dy + dx) * 3 + c], x[:, c, dy::2, dx::2])
    assert Squeeze().output_shape((3, 4, 6)) == (12, 2, 3)
    assert Unsqueeze().output_shape((12, 2, 3)) == (3, 4, 6)
    with pytest.raises(ShapeError, match="even"):
        squeeze2d(torch.zeros(1, 1, 3, 4))


def test_checkerboard_masks_partition_the_pixels():
    m0, m1 = checkerboard(4, 5, 0, torch.zeros(1)), checkerboard(4, 5, 1, torch.zeros(1))
    assert torch.equal(m0 + m1, torch.ones(1, 1, 4, 5))
    assert m0[0, 0, 0, 0] == 1 and m0[0, 0, 0, 1] == 0 and m0[0, 0, 1, 1] == 1


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_coupling_changes_only_the_free_half_and_starts_as_identity(mask):
    torch.manual_seed(4)
    x = torch.randn(3, 4, 6, 6)
    fresh = AffineCoupling(4, mask, 0, num_blocks=1, filters=8)
    y, log_det = fresh(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(3))
    y, _ = randomize(fresh)(x)
    if mask == "checkerboard":
        kept = checkerboard(6, 6, 0, x).bool().expand_as(x)
    else:
        kept = torch.zeros_like(x, dtype=torch.bool)
        kept[:, :2] = True
    assert torch.equal(y[kept], x[kept])
    assert not torch.allclose(y[~kept], x[~kept])


def test_coupling_log_scale_is_bounded_by_its_learned_scale():
    layer = randomize(AffineCoupling(2, "channel", 0, num_blocks=1, filters=8))
    with torch.no_grad():
        layer.scale.fill_(0.5)
        layer.net.out.weight_g.mul_(1000)  # saturate tanh
    x = torch.randn(4, 2, 5, 5)
    _, log_det = layer(x)
    assert log_det.abs().max() <= 0.5 * 25 + 1e-4


def test_coupling_under_bf16_autocast_keeps_float32_values_and_log_det():
    torch.manual_seed(5)
    layer = coupling("checkerboard", 0)
    x = torch.randn(4, 4, 8, 8)
    y32, ld32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, ld16 = layer(x)
    assert y16.dtype == torch.float32 and ld16.dtype == torch.float32
    assert torch.allclose(y16, y32, atol=0.1) and torch.allclose(ld16, ld32, rtol=0.05, atol=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_back, _ = layer.inverse(y16)
    assert torch.allclose(x_back, x, atol=1e-4)  # same bf16 net on the same conditioning half


def test_logit_values_and_alpha_validation():
    y = torch.tensor([[0.0, 0.5, 1.0]])
    z, log_det = Logit(0.05)(y)
    assert torch.allclose(z, torch.tensor([[math.log(0.05 / 0.95), 0.0, math.log(0.95 / 0.05)]]))
    p = torch.tensor([0.05, 0.5, 0.95])
    expected = (math.log(0.9) - torch.log(p) - torch.log1p(-p)).sum()
    assert torch.allclose(log_det, expected[None])
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.5)


def test_logit_with_small_alpha_is_float64_accurate_near_one():
    """MNIST's dequantized 255s lie just below 1; with alpha = 1e-6 their log(1 - p) must
    not inherit the float32 rounding of p (absolute 6e-8, relative 6e-4 of 1 - p here)."""
    alpha = 1e-6
    y = torch.tensor([[1 - 1e-4, 1 - 3e-5, 0.5, 1e-5]])
    z, log_det = Logit(alpha)(y)
    p = alpha + (1 - 2 * alpha) * y.double()  # the same float32 inputs, in float64
    z_ref = torch.log(p) - torch.log1p(-p)
    log_det_ref = (math.log1p(-2 * alpha) - torch.log(p) - torch.log1p(-p)).sum(1)
    assert torch.allclose(z.double(), z_ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(log_det.double(), log_det_ref, rtol=0, atol=1e-5)


def test_wrong_shapes_are_clear_errors():
    with pytest.raises(ShapeError, match=r"expects \[B, 4, H, W\]"):
        coupling("checkerboard", 0)(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ShapeError, match="even channel count"):
        AffineCoupling(3, "channel")
    with pytest.raises(ShapeError, match="even number of channels"):
        FactorOut(Squeeze())(torch.zeros(1, 3, 4, 4))


def test_recalibrated_batch_norm_statistics_are_exact_batch_averages():
    """One batch: the eval-mode flow (running statistics) then equals the training-mode
    flow on that batch (batch statistics). Three batches: the first layer's running mean /
    variance are the plain averages of the batches' own per-channel means / variances."""
    torch.manual_seed(0)
    flow = Composition(batch_norm(), coupling("checkerboard", 0), batch_norm()).double()
    flow[2].momentum = 0.3
    flow.eval()
    x = torch.randn(8, 4, 4, 4, dtype=torch.float64) * 2 + 1
    assert recalibrate_batch_norm(flow, [x], flow) == 1
    assert not flow.training and flow[2].momentum == 0.3  # restored
    z_eval, ld_eval = flow(x)
    flow.train()
    z_train, ld_train = flow(x)
    torch.testing.assert_close(z_eval, z_train)
    torch.testing.assert_close(ld_eval, ld_train)

    batches = [torch.randn(8, 4, 4, 4, dtype=torch.float64) * s + s for s in (0.5, 1.0, 3.0)]
    assert recalibrate_batch_norm(flow, batches, flow) == 3
    assert flow.training
    dims = [0, 2, 3]
    mean = torch.stack([b.mean(dims) for b in batches]).mean(0)
    var = torch.stack([b.var(dims, unbiased=False) for b in batches]).mean(0)
    torch.testing.assert_close(flow[0].running_mean, mean)
    torch.testing.assert_close(flow[0].running_var, var)

    before = flow[0].running_mean.clone()
    assert recalibrate_batch_norm(flow, [], flow) == 0  # nothing to average: unchanged
    torch.testing.assert_close(flow[0].running_mean, before)


def test_recalibration_covers_torch_batch_norm_inside_the_nets():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3)).double()
    net[1].running_mean.fill_(5.0)
    batches = [torch.randn(6, 2, 3, 3, dtype=torch.float64) + i for i in range(2)]
    assert recalibrate_batch_norm(net, batches, net) == 2
    assert net[1].momentum == 0.1
    with torch.no_grad():
        h = [net[0](b) for b in batches]
    expected = torch.stack([v.mean([0, 2, 3]) for v in h]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected)


class ConvThenFlowNorm(torch.nn.Module):
    """A conv + torch BatchNorm2d (as in the s/t nets) followed by a BatchNormFlow."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
        self.flow = BatchNormFlow(2)

    def forward(self, x: torch.Tensor):
        return self.flow(self.net(x))


def test_averaging_two_recalibrations_equals_one_over_all_their_batches():
    """What RealNVP does under DDP: each rank recalibrates on as many batches of its own as
    the others, then the ranks average `running_statistics`; the result is the
    recalibration over all batches at once, for torch's layers and BatchNormFlow alike."""
    torch.manual_seed(2)
    base = ConvThenFlowNorm().double()
    batches = [torch.randn(6, 2, 3, 3, dtype=torch.float64) * (i + 1) + i for i in range(4)]
    ranks = [copy.deepcopy(base) for _ in range(2)]
    for rank, model in enumerate(ranks):
        recalibrate_batch_norm(model, batches[rank::2], model)
    per_rank = [running_statistics(model) for model in ranks]
    averaged = [(a + b) / 2 for a, b in zip(*per_rank, strict=True)]
    together = copy.deepcopy(base)
    recalibrate_batch_norm(together, batches, together)
    expected = running_statistics(together)
    assert len(expected) == 4  # mean and variance of both norms
    for got, want in zip(averaged, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_weight_norm_conv_matches_torch_parametrization_and_pickles():
    """WeightNormConv2d against torch.nn.utils.parametrizations.weight_norm on the same
    g, v (the parametrization's `original0`, `original1`): same outputs and gradients;
    unlike the parametrized conv it survives pickling."""
    torch.manual_seed(3)
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(3, 5, 3, padding=1))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(5, 1, 1, 1) + 0.5)
    theirs = torch.nn.Sequential(conv, torch.nn.ReLU())
    theirs_state = theirs.state_dict()
    state = {
        "0.bias": theirs_state["0.bias"],
        "0.weight_g": theirs_state["0.parametrizations.weight.original0"],
        "0.weight_v": theirs_state["0.parametrizations.weight.original1"],
    }
    ours = torch.nn.Sequential(WeightNormConv2d(3, 5, 3), torch.nn.ReLU())
    ours.load_state_dict(state)

    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))
    (g_ours,) = torch.autograd.grad(ours(x).square().sum(), ours[0].weight_v)
    (g_theirs,) = torch.autograd.grad(
        theirs(x).square().sum(), conv.parametrizations.weight.original1
    )
    torch.testing.assert_close(g_ours, g_theirs)

    fresh = WeightNormConv2d(3, 5, 3)  # g starts at |v|: the kernel is Conv2d's own init
    torch.testing.assert_close(fresh.weight_g.flatten(), fresh.weight_v.flatten(1).norm(dim=1))
    with pytest.raises(RuntimeError, match="Serialization"):
        pickle.dumps(theirs)
    torch.testing.assert_close(pickle.loads(pickle.dumps(ours))(x), ours(x))


@pytest.mark.parametrize("in_channels", [1, 4])
def test_channels_last_net_runs_every_conv_channels_last_and_matches_nchw(in_channels):
    """With `channels_last`, every conv after the first sees a channels-last input, also
    when the net's input has one channel (contiguous in both formats); the values are those
    of the same weights in NCHW."""
    torch.manual_seed(4)
    nchw = ResNet(in_channels, 2, num_blocks=2, filters=8, channels_last=False, norm=True)
    with torch.no_grad():
        nchw.out.weight_g.normal_()  # the zero-initialized last conv would hide the rest
    fast = copy.deepcopy(nchw)
    fast.channels_last = True
    seen = []
    for conv in list(fast.modules())[1:]:
        if isinstance(conv, WeightNormConv2d) and conv is not fast.inp:
            conv.register_forward_pre_hook(
                lambda m, args: seen.append(
                    args[0].is_contiguous(memory_format=torch.channels_last)
                )
            )
    x = torch.randn(3, in_channels, 6, 6)
    torch.testing.assert_close(fast(x), nchw(x))
    assert seen == [True] * (3 * 2 + 1)  # three convs per block, then the last conv
