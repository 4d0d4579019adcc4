"""Shape-changing pieces: squeeze (space -> channels) and factor-out (multi-scale split)."""

from __future__ import annotations

import torch

from gmlab.errors import ShapeError
from gmlab.nn.flows.base import Flow, zero_log_det


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; output channel (dy, dx, c) holds x[c, 2i+dy, 2j+dx]
    (the ordering of the original RealNVP code: the first half of the channels is the top
    row of every 2x2 block, the second half the bottom row)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ShapeError(f"squeeze needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(y: torch.Tensor) -> torch.Tensor:
    """Inverse of `squeeze2d`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c4, h, w = y.shape
    if c4 % 4:
        raise ShapeError(f"unsqueeze needs a multiple of 4 channels, got {c4}")
    y = y.reshape(b, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, c4 // 4, 2 * h, 2 * w)


class Squeeze(Flow):
    """Space-to-channels reshuffle [C, H, W] -> [4C, H/2, W/2] (a permutation: log-det 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze2d(x), zero_log_det(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unsqueeze2d(y), zero_log_det(y)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = shape
        return (4 * c, h // 2, w // 2)


class Unsqueeze(Squeeze):
    """Channels-to-space, the inverse of `Squeeze`: [4C, H, W] -> [C, 2H, 2W]."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().inverse(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(y)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = shape
        return (c // 4, 2 * h, 2 * w)


class FactorOut(Flow):
    """Multi-scale split: the first half of the channels goes on through `flow`, the second
    half goes straight to the base distribution (it is passed through unchanged).

    y = concat(flow(x[:, :C/2]), x[:, C/2:]) along channels, so the output has the input's
    shape and the base distribution (an isotropic Gaussian) covers both parts; only `flow`
    contributes to the log-det. `flow` must keep the shape of its input (RealNVP's scales
    end with an `Unsqueeze` that undoes their `Squeeze`).
    """

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    @staticmethod
    def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] % 2:
            raise ShapeError(f"factor-out needs an even number of channels, got {x.shape[1]}")
        return x.chunk(2, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep, out = self._halves(x)
        keep, log_det = self.flow(keep)
        return torch.cat([keep, out], dim=1), log_det

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep, out = self._halves(y)
        keep, log_det = self.flow.inverse(keep)
        return torch.cat([keep, out], dim=1), log_det

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c, *rest = shape
        inner = (c // 2, *rest)
        if tuple(self.flow.output_shape(inner)) != inner:
            raise ShapeError(f"FactorOut's flow must keep its input shape {inner}")
        return tuple(shape)
