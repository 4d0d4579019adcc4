"""The RealNVP flow (Dinh, Sohl-Dickstein & Bengio 2017): multi-scale affine couplings."""

from __future__ import annotations

from gmlab.errors import ShapeError
from gmlab.nn.flows.base import Composition, Flow
from gmlab.nn.flows.coupling import AffineCoupling
from gmlab.nn.flows.elementwise import Logit
from gmlab.nn.flows.normalization import ActNorm, BatchNormFlow
from gmlab.nn.flows.reshape import FactorOut, Squeeze, Unsqueeze

NORMS = (None, "batch", "act")
NET_NORMS = (None, "batch")


def build_realnvp(
    shape: tuple[int, int, int] | list[int],
    num_scales: int = 2,
    num_blocks: int = 8,
    filters: int = 128,
    filter_growth: float = 1.0,
    kernel_size: int = 3,
    alpha: float = 0.05,
    norm: str | None = "batch",
    net_norm: str | None = None,
    channels_last: bool = True,
) -> Composition:
    """The RealNVP flow over unit-cube images of `shape` (C, H, W); its output has that shape.

    logit -> scale 0 -> ... -> scale num_scales-1. Each scale but the last is
    "3 checkerboard couplings, squeeze, 3 channel-wise couplings, factor out half, <next
    scale>, unsqueeze"; the last is 4 checkerboard couplings (num_scales=2 is the paper's
    32x32 model, 5 takes 64x64 down to a 4x4 final scale).

    Args:
        shape: (C, H, W); H and W divisible by 2^(num_scales-1), the last scale >= 2x2.
        num_blocks, filters, kernel_size: each coupling's s/t net, a weight-normalized
            ResNet of `num_blocks` blocks of `filters` (x `filter_growth` per scale).
        alpha: the logit's squeeze, logit(alpha + (1 - 2 alpha) y).
        norm: after every coupling: "batch" (the paper's), "act" or None.
        net_norm: "batch" also puts batch norm inside the s/t nets; None: weight norm alone.
        channels_last: channels-last convolutions (faster on CPU with oneDNN).

    The flow inverts itself, and its log-det is that of the brute-force Jacobian:

    >>> import torch
    >>> from torch.autograd.functional import jacobian
    >>> _ = torch.manual_seed(0)
    >>> flow = build_realnvp((1, 4, 4), num_blocks=1, filters=8, norm=None).double()
    >>> for p in flow.parameters():  # random weights: a fresh flow's couplings are identities
    ...     _ = p.data.normal_(0, 0.1)
    >>> x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    >>> z, log_det = flow(x)
    >>> torch.allclose(flow.inverse(z)[0], x)
    True
    >>> J = jacobian(lambda v: flow(v)[0], x[:1]).reshape(16, 16)  # dz/dx of one image
    >>> torch.allclose(log_det[0], torch.linalg.slogdet(J).logabsdet)
    True
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if net_norm not in NET_NORMS:
        raise ValueError(f"net_norm must be one of {NET_NORMS}, got {net_norm!r}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    c, h, w = (int(s) for s in shape)
    step = 2 ** (num_scales - 1)
    if h % step or w % step or h // step < 2 or w // step < 2:
        raise ShapeError(
            f"{num_scales} scales need height and width divisible by {step} and at least "
            f"{2 * step}, got {h}x{w}"
        )

    def coupling(channels: int, mask: str, parity: int, width: int) -> list[Flow]:
        layer = AffineCoupling(
            channels,
            mask,
            parity,
            num_blocks=num_blocks,
            filters=width,
            kernel_size=kernel_size,
            channels_last=channels_last,
            net_norm=net_norm == "batch",
        )
        if norm == "batch":
            return [layer, BatchNormFlow(channels)]
        if norm == "act":
            return [layer, ActNorm(channels)]
        return [layer]

    def scale(index: int, channels: int) -> Composition:
        width = max(2, int(round(filters * filter_growth**index)))
        if index == num_scales - 1:
            return Composition(
                *(f for p in (0, 1, 0, 1) for f in coupling(channels, "checkerboard", p, width))
            )
        layers: list[Flow] = []
        for p in (0, 1, 0):
            layers += coupling(channels, "checkerboard", p, width)
        layers.append(Squeeze())
        for p in (0, 1, 0):
            layers += coupling(4 * channels, "channel", p, width)
        layers.append(FactorOut(scale(index + 1, 2 * channels)))
        layers.append(Unsqueeze())
        return Composition(*layers)

    return Composition(Logit(alpha), scale(0, c))
