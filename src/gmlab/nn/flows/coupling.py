"""Affine coupling layers (checkerboard and channel-wise masks) and their s/t ResNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gmlab.errors import ConfigError, ShapeError
from gmlab.nn.flows.base import Flow, sum_except_batch, wide_dtype

MASKS = ("checkerboard", "channel")


class WeightNormConv2d(nn.Conv2d):
    """A 'same'-padded Conv2d with a weight-normalized kernel (Salimans & Kingma 2016):

        weight = g * v / |v|,   |v| the norm of each output channel's kernel v[o],

    held as plain parameters `weight_g` [O, 1, 1, 1] and `weight_v` [O, I, k, k] (g starts
    at |v|, so the initial kernel is PyTorch's default Conv2d one). The same function and
    parameters as `torch.nn.utils.parametrizations.weight_norm`, but picklable (spawned
    processes, `torch.save(model)`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        v = self.weight.detach().clone()
        del self.weight
        self.weight_g = nn.Parameter(
            torch.linalg.vector_norm(v.flatten(1), dim=1).view(-1, 1, 1, 1)
        )
        self.weight_v = nn.Parameter(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, torch._weight_norm(self.weight_v, self.weight_g, 0), self.bias)


def wn_conv(
    in_channels: int, out_channels: int, kernel_size: int, zero: bool = False
) -> WeightNormConv2d:
    """A `WeightNormConv2d`; zero=True starts it as the zero map (g = 0, bias = 0): a
    coupling whose net ends in it starts as the identity."""
    conv = WeightNormConv2d(in_channels, out_channels, kernel_size)
    if zero:
        with torch.no_grad():
            conv.weight_g.zero_()
            conv.bias.zero_()
    return conv


def batch_norm_or_identity(channels: int, norm: bool) -> nn.Module:
    """BatchNorm2d(channels) when `norm`, else a no-op (and no state-dict entries)."""
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(bn(conv kxk(relu(bn(conv1x1(x))))))) with a filters/2 bottleneck;
    the batch norms only with `norm=True`."""

    def __init__(self, filters: int, kernel_size: int = 3, norm: bool = False) -> None:
        super().__init__()
        self.reduce = wn_conv(filters, filters // 2, 1)
        self.reduce_norm = batch_norm_or_identity(filters // 2, norm)
        self.conv = wn_conv(filters // 2, filters // 2, kernel_size)
        self.conv_norm = batch_norm_or_identity(filters // 2, norm)
        self.expand = wn_conv(filters // 2, filters, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.reduce_norm(self.reduce(x)), inplace=True)
        h = F.relu(self.conv_norm(self.conv(h)), inplace=True)
        return self.expand(h).add_(x)  # in place: a conv's backward never needs its output


class ResNet(nn.Module):
    """The scale/translation network of a coupling: conv kxk -> ReLU -> `num_blocks`
    bottleneck residual blocks -> ReLU -> conv kxk, every conv weight-normalized, the last
    one zero-initialized (so a fresh coupling is the identity). With `norm`, batch norm
    follows every conv but the last (the paper's s/t nets): the net only conditions the
    coupling, so the flow stays exactly invertible and its log-det exact (in training mode
    the s/t values of a sample depend on its batch, as with batch norm in the flow itself).

    Args:
        in_channels, out_channels: channels of the input and of the output (2 x the
            transformed channels: log-scale and translation).
        num_blocks, filters, kernel_size: depth, width and kernel of the residual stack.
        channels_last: run the convolutions in channels-last memory format (faster with
            oneDNN on CPU).
        norm: batch norm after the convolutions (see above).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 8,
        filters: int = 128,
        kernel_size: int = 3,
        channels_last: bool = False,
        norm: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.inp = wn_conv(in_channels, filters, kernel_size)
        self.inp_norm = batch_norm_or_identity(filters, norm)
        self.blocks = nn.Sequential(
            *(ResidualBlock(filters, kernel_size, norm) for _ in range(num_blocks))
        )
        self.out = wn_conv(filters, out_channels, kernel_size, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.stride(1) != 1:
            # copied into channels-last strides, also for one channel (MNIST's first
            # couplings): such an input is contiguous in both formats, `contiguous()` keeps
            # its NCHW strides, and oneDNN would then run the first conv, forward and
            # backward, in NCHW and convert its 64-channel output and gradient every step
            x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        h = F.relu(self.inp_norm(self.inp(x)), inplace=True)
        h = F.relu(self.blocks(h), inplace=True)
        return self.out(h)


def checkerboard(height: int, width: int, parity: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 1, H, W] mask, 1 where (i + j) % 2 == parity (the conditioning pixels)."""
    i = torch.arange(height, device=like.device)
    j = torch.arange(width, device=like.device)
    return ((i[:, None] + j[None, :]) % 2 == parity).to(like.dtype)[None, None]


class AffineCoupling(Flow):
    """RealNVP affine coupling: half of the input (the mask) conditions an element-wise
    affine map of the other half,

        y_b = x_b * exp(log_s(x_a)) + t(x_a),   y_a = x_a,   log|det| = sum log_s,

    with log_s = scale * tanh(raw) bounded by a learned per-channel `scale`.

    Masks:
      - "checkerboard": x_a are the pixels with (i + j) % 2 == parity; the net sees the
        whole image with the other pixels zeroed and predicts s, t for every pixel, of
        which the conditioning pixels' are discarded.
      - "channel": x_a is the first (parity 0) or second (parity 1) half of the channels;
        the net sees only x_a and predicts s, t only for x_b (no work on masked halves).

    The net's output is cast to the input's precision (at least float32) before tanh /
    exp, so under bf16 autocast only the convolutions run in bf16 and the flow's values and
    log-det stay in float32. `num_blocks`, `filters`, `kernel_size`, `channels_last` and
    `net_norm` (batch norm inside the net) shape the s/t `ResNet`.
    """

    def __init__(
        self,
        channels: int,
        mask: str,
        parity: int = 0,
        num_blocks: int = 8,
        filters: int = 128,
        kernel_size: int = 3,
        channels_last: bool = False,
        net_norm: bool = False,
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ConfigError(f"coupling mask must be one of {MASKS}, got {mask!r}")
        if mask == "channel" and channels % 2:
            raise ShapeError(f"a channel-wise coupling needs an even channel count, got {channels}")
        self.mask = mask
        self.parity = int(parity)
        self.channels = channels
        in_ch, out_ch = (channels, channels) if mask == "checkerboard" else (channels // 2,) * 2
        self.net = ResNet(
            in_ch, 2 * out_ch, num_blocks, filters, kernel_size, channels_last, net_norm
        )
        self.scale = nn.Parameter(torch.ones(1, out_ch, 1, 1))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(
                f"{self.mask} coupling expects [B, {self.channels}, H, W], got {list(x.shape)}"
            )

    def _log_scale_shift(self, cond: torch.Tensor, dtype: torch.dtype):
        raw, shift = self.net(cond).to(wide_dtype(dtype)).chunk(2, dim=1)
        return self.scale * torch.tanh(raw), shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(y, inverse=True)

    def _couple(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        if self.mask == "checkerboard":
            m = checkerboard(x.shape[2], x.shape[3], self.parity, x)
            log_s, t = self._log_scale_shift(x * m, x.dtype)
            free = 1.0 - m
            log_s, t = log_s * free, t * free
            y = (x - t) * torch.exp(-log_s) if inverse else x * torch.exp(log_s) + t
            log_det = sum_except_batch(log_s)
            return y, -log_det if inverse else log_det
        xa, xb = x.chunk(2, dim=1)
        if self.parity:
            xa, xb = xb, xa
        log_s, t = self._log_scale_shift(xa, x.dtype)
        yb = (xb - t) * torch.exp(-log_s) if inverse else xb * torch.exp(log_s) + t
        y = torch.cat([yb, xa] if self.parity else [xa, yb], dim=1)
        log_det = sum_except_batch(log_s)
        return y, -log_det if inverse else log_det

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mask={self.mask}, parity={self.parity}"
