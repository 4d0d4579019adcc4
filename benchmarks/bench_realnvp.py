"""RealNVP training speed: gmlab's model against a straightforward reference implementation
of the same architecture and the same loss, side by side on CIFAR-shaped batches.

Architecture (both): the 32x32 RealNVP of the RealNVP reference implementation, logit -> 3
checkerboard couplings -> squeeze -> 3 channel-wise couplings -> factor out half -> 4
checkerboard couplings, every s/t net a weight-normalized ResNet of 8 bottleneck blocks x
128 filters. Loss (both): exact NLL in bits/dim. One training step = forward, backward and
an Adam step on a 64x3x32x32 uint8 batch. The reference is written the plain way (masks
multiplied in, channel-wise couplings masked rather than sliced, NCHW, no in-place ops); the
same weights are copied into it and both losses are printed to show they agree.

Variants of gmlab's model: float32 NCHW, float32 channels-last, and bf16 autocast of the
s/t nets (log-dets in float32), channels-last. Then the MNIST record preset's step,
channels-last against NCHW (`mnist_rows`). On a GPU (`gpu()`): images/s at batch 64 and
256 in float32 and bf16, and optionally compiled.

Each rate is also printed as achieved GFLOP/s (the step's flops counted by
`torch.utils.flop_counter`, 91% of the time is convolutions) over the machine's own fp32
matmul rate, which bounds what any fp32 implementation of this architecture can reach.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import best_time, cuda_synced, machine, matmul_gflops

BATCH, SHAPE = 64, (3, 32, 32)
GPU_BATCHES = (64, 256)
BLOCKS, FILTERS = 8, 128
# the reference has no batch norm: gmlab's model without it (norm=None) is the same flow
ARCH = {"num_blocks": BLOCKS, "filters": FILTERS, "norm": None}


def gmlab_realnvp(channels_last: bool = True, shape=SHAPE, arch=ARCH, **options):
    """gmlab's RealNVP on images of `shape` with the `arch` flow (the flow part's config)."""
    from gmlab.models.realnvp import RealNVP

    flow = {"_target_": "gmlab.nn.flows.build_realnvp", **arch, "channels_last": channels_last}
    return RealNVP(list(shape), flow=flow, **options)


# ------------------------------------------------------------------ reference
def ref_conv(cin: int, cout: int, k: int) -> nn.Module:
    return weight_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class RefBlock(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (
            ref_conv(f, f // 2, 1),
            ref_conv(f // 2, f // 2, 3),
            ref_conv(f // 2, f, 1),
        )

    def forward(self, x):
        return x + self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


class RefResNet(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.inp = ref_conv(cin, FILTERS, 3)
        self.blocks = nn.Sequential(*(RefBlock(FILTERS) for _ in range(BLOCKS)))
        self.out = ref_conv(FILTERS, cout, 3)

    def forward(self, x):
        return self.out(torch.relu(self.blocks(torch.relu(self.inp(x)))))


class RefCoupling(nn.Module):
    """mask: 1 = conditioning entries ([1, 1, H, W] checkerboard or [1, C, 1, 1] channels)."""

    def __init__(self, channels: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = RefResNet(channels, 2 * channels)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x):
        s, t = self.net(x * self.mask).chunk(2, dim=1)
        log_s = self.scale * torch.tanh(s) * (1 - self.mask)
        t = t * (1 - self.mask)
        return x * torch.exp(log_s) + t, log_s.flatten(1).sum(1)


def ref_checkerboard(h: int, w: int, parity: int) -> torch.Tensor:
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return (ij % 2 == parity).float()[None, None]


def ref_channels(c: int, parity: int) -> torch.Tensor:
    first = (torch.arange(c) < c // 2).float()
    return (first if parity == 0 else 1 - first)[None, :, None, None]


class RefRealNVP(nn.Module):
    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        c, h, w = SHAPE
        self.alpha = alpha
        self.scale1 = nn.ModuleList(RefCoupling(c, ref_checkerboard(h, w, p)) for p in (0, 1, 0))
        self.scale1_ch = nn.ModuleList(
            RefCoupling(4 * c, ref_channels(4 * c, p)) for p in (0, 1, 0)
        )
        self.final = nn.ModuleList(
            RefCoupling(2 * c, ref_checkerboard(h // 2, w // 2, p)) for p in (0, 1, 0, 1)
        )

    def log_prob(self, y):  # y: dequantized images in [0, 1]
        normal = torch.distributions.Normal(0.0, 1.0)
        p = self.alpha + (1 - 2 * self.alpha) * y
        x = torch.log(p) - torch.log(1 - p)
        log_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log(1 - p)).flatten(1).sum(1)
        for layer in self.scale1:
            x, ld = layer(x)
            log_det = log_det + ld
        b, c, h, w = x.shape  # squeeze, channel order (dy, dx, c)
        x = (
            x.reshape(b, c, h // 2, 2, w // 2, 2)
            .permute(0, 3, 5, 1, 2, 4)
            .reshape(b, 4 * c, h // 2, w // 2)
        )
        for layer in self.scale1_ch:
            x, ld = layer(x)
            log_det = log_det + ld
        x, out = x.chunk(2, dim=1)  # factor out: the second half goes to the prior
        log_det = log_det + normal.log_prob(out).flatten(1).sum(1)
        for layer in self.final:
            x, ld = layer(x)
            log_det = log_det + ld
        return normal.log_prob(x).flatten(1).sum(1) + log_det

    def loss(self, x_raw):
        y = (x_raw.float() + torch.rand(x_raw.shape)) / 256
        d = y[0].numel()
        return ((-self.log_prob(y) + d * math.log(256)) / (d * math.log(2))).mean()


# ------------------------------------------------------------------ weight copy
def copy_into_reference(model, ref: RefRealNVP) -> None:
    """Give the reference exactly gmlab's function (the sliced channel-wise nets are embedded
    into the masked ones: zero input columns for masked channels, s/t rows at free ones)."""
    from gmlab.nn.flows import AffineCoupling

    ours = [m for m in model.flow.modules() if isinstance(m, AffineCoupling)]
    theirs = [*ref.scale1, *ref.scale1_ch, *ref.final]
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            sa, sb = a.net.state_dict(), b.net.state_dict()
            for va, vb in zip(sa.values(), sb.values(), strict=True):
                if va.shape == vb.shape:
                    vb.copy_(va)
            if a.mask == "channel":
                c, half = a.channels, a.channels // 2
                free = torch.arange(half) + (0 if a.parity else half)
                cond = torch.arange(half) + (half if a.parity else 0)
                v_in = b.net.inp.parametrizations.weight.original1
                v_in.zero_()
                v_in[:, cond] = a.net.inp.weight_v
                for ours_name, their_name in (("weight_g", "original0"), ("weight_v", "original1")):
                    src = getattr(a.net.out, ours_name)
                    dst = getattr(b.net.out.parametrizations.weight, their_name)
                    dst[free], dst[c + free] = src[:half], src[half:]
                b.net.out.bias[free], b.net.out.bias[c + free] = (
                    a.net.out.bias[:half],
                    a.net.out.bias[half:],
                )
                b.scale[:, free] = a.scale
            else:
                b.scale.copy_(a.scale)


# ------------------------------------------------------------------ timing
def best_rates(steps: dict, repeats: int = 3) -> dict[str, float]:
    """images/s of each step function, best of `repeats` timed calls after one warm-up call;
    the variants take turns, so load from other processes hits them alike."""
    for step in steps.values():
        step()  # warm-up: oneDNN primitive creation, allocator
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: BATCH / t for name, t in best.items()}


def train_step(model, loss_fn, x):
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()

    return step


def gmlab_loss(model):
    def loss(x_raw):
        y, log_det = model.prepare(x_raw, train=True)
        return model.to_bits(model.log_prob(y) + log_det).mean()

    return loss


def same_weights_losses(x_raw: torch.Tensor) -> tuple[float, float, float]:
    """Mean bpd of uint8 images [B, 3, 32, 32] under the reference and under gmlab's model
    (float32, then bf16 s/t nets) with the same random weights and dequantization noise:
    the evidence that both implementations train on an identical loss."""

    torch.manual_seed(0)
    model = gmlab_realnvp(channels_last=False, amp="none")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # move well off the identity init
    ref = RefRealNVP()
    copy_into_reference(model, ref)
    with torch.no_grad():
        torch.manual_seed(1)
        ours = gmlab_loss(model)(x_raw).item()
        torch.manual_seed(1)
        theirs = ref.loss(x_raw).item()
        model.hparams.amp = "bf16"
        torch.manual_seed(1)
        ours_bf16 = gmlab_loss(model)(x_raw).item()
    return theirs, ours, ours_bf16


def main() -> None:

    print(
        f"RealNVP {BLOCKS} blocks x {FILTERS} filters, batch {BATCH}x{'x'.join(map(str, SHAPE))}, "
        f"{torch.get_num_threads()} threads ({machine()})"
    )
    torch.manual_seed(0)
    x = torch.randint(0, 256, (BATCH, *SHAPE), dtype=torch.uint8)

    theirs, ours, ours_bf16 = same_weights_losses(x[:8])
    print(
        f"loss on the same weights and noise: reference {theirs:.6f} bpd, gmlab {ours:.6f} "
        f"(diff {ours - theirs:+.1e}), gmlab bf16 s/t nets {ours_bf16:.6f} bpd"
    )

    ref = RefRealNVP()
    steps = {"reference (masks multiplied, NCHW, float32)": train_step(ref, ref.loss, x)}
    for label, amp, cl in (
        ("gmlab float32 NCHW", "none", False),
        ("gmlab float32 channels-last", "none", True),
        ("gmlab bf16 s/t nets, channels-last", "bf16", True),
    ):
        model = gmlab_realnvp(channels_last=cl, amp=amp)
        steps[label] = train_step(model, gmlab_loss(model), x)
    rates = best_rates(steps)
    # the work of one step (both implementations do the same convolutions), against the
    # machine's own fp32 matmul rate measured now
    with FlopCounterMode(display=False) as counter:
        steps["gmlab float32 channels-last"]()
    gflop_per_image = counter.get_total_flops() / BATCH / 1e9
    peak = matmul_gflops()
    print(f"one training step: {gflop_per_image:.2f} GFLOP/image; fp32 matmul {peak:.1f} GFLOP/s")
    rate_ref = next(iter(rates.values()))
    for label, rate in rates.items():
        achieved = rate * gflop_per_image
        print(
            f"{label + ':':46s} {rate:6.2f} images/s, {rate / rate_ref:.2f}x the reference, "
            f"{achieved:6.1f} GFLOP/s = {achieved / peak:.2f} x fp32 matmul"
        )
    need = 14.0 * gflop_per_image
    print(f"goal 14 images/s in fp32 = {need:.0f} GFLOP/s = {need / peak:.2f} x fp32 matmul here")

    mnist_rows()
    if torch.cuda.is_available():
        gpu()


def mnist_rows() -> None:
    """The MNIST record preset's step (`realnvp_mnist_record`: 2 scales, 4 blocks x 64
    filters, batch norm in the flow and in the s/t nets, bf16 s/t nets) on 64 x 1 x 28 x 28,
    channels-last against NCHW; the first couplings' nets see one channel."""
    shape = (1, 28, 28)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (BATCH, *shape), dtype=torch.uint8)
    arch = {"num_scales": 2, "num_blocks": 4, "filters": 64, "alpha": 1e-6, "net_norm": "batch"}
    steps = {}
    for label, cl in (("NCHW", False), ("channels-last", True)):
        model = gmlab_realnvp(cl, shape=shape, arch=arch, amp="bf16")
        steps[label] = train_step(model, gmlab_loss(model), x)
    rates = best_rates(steps)
    base = rates["NCHW"]
    for label, rate in rates.items():
        print(
            f"MNIST record step (4 x 64, bf16), {label + ':':15s} {1e3 * BATCH / rate:6.1f} ms "
            f"({rate:5.1f} images/s, {rate / base:.2f}x NCHW)"
        )


def gpu() -> None:
    """GPU rows: training images/s of the same step in float32 and with bf16 s/t nets, at
    batch 64 and at the larger GPU_BATCHES, and the achieved TFLOP/s against the GPU's own
    dense matmul rate in each precision (goal: 0.4 of it). With GMLAB_BENCH_COMPILE=1 also
    the flow under `torch.compile(mode="reduce-overhead")` (CUDA graphs) at batch 64, with
    its compile time."""
    peaks = {
        "none": matmul_gflops(8192, device="cuda") / 1e3,
        "bf16": matmul_gflops(8192, torch.bfloat16, device="cuda") / 1e3,
    }
    compiled = os.environ.get("GMLAB_BENCH_COMPILE") == "1"
    tflop_per_image = None
    variants = [
        (batch, amp, mode)
        for batch in GPU_BATCHES
        for amp in ("none", "bf16")
        for mode in ("eager", "reduce-overhead")
        if mode == "eager" or (compiled and batch == BATCH)
    ]
    torch.manual_seed(0)
    inputs = {
        batch: torch.randint(0, 256, (batch, *SHAPE), dtype=torch.uint8, device="cuda")
        for batch in GPU_BATCHES
    }
    for batch, amp, mode in variants:
        x = inputs[batch]
        model = gmlab_realnvp(amp=amp).cuda()
        start = time.perf_counter()
        if mode != "eager":
            model.flow.compile(mode=mode)
        step = cuda_synced(train_step(model, gmlab_loss(model), x))
        try:
            step()  # eager: warm-up; compiled: the compilation itself
        except Exception as exc:  # a GPU slot is short: report and go on
            print(f"batch {batch}, {amp}, {mode}: failed ({type(exc).__name__}: {exc})")
            continue
        first_s = time.perf_counter() - start
        if tflop_per_image is None:
            with FlopCounterMode(display=False) as counter:
                step()
            tflop_per_image = counter.get_total_flops() / batch / 1e12
        rate = batch / best_time(step, repeats=10, warmup=2)
        achieved = rate * tflop_per_image
        label = "float32" if amp == "none" else "bf16 s/t nets"
        extra = f", first step {first_s:.0f} s" if mode != "eager" else ""
        print(
            f"GPU ({torch.cuda.get_device_name()}), batch {batch:4d}, {label}, {mode}: "
            f"{rate:7.1f} images/s, {achieved:5.1f} TFLOP/s = "
            f"{achieved / peaks[amp]:.2f} x the GPU's matmul in that precision "
            f"({peaks[amp]:.0f} TFLOP/s; goal 0.4){extra}",
            flush=True,
        )


if __name__ == "__main__":
    main()
