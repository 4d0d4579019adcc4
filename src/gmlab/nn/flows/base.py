"""The flow protocol: invertible pieces that return their log-det, and their composition.

Conventions (nflows / zuko style, one for every piece in `gmlab.nn.flows`):

- `forward(x) -> (y, log_abs_det)` runs the *normalizing* direction, data -> latent.
- `inverse(y) -> (x, log_abs_det)` runs the *generative* direction, latent -> data.
- `log_abs_det` is a float32 tensor [B]: log |det d(output)/d(input)| of the map just
  applied, one value per sample. So `inverse`'s log-det is minus `forward`'s at the
  matching point, and for a data batch x:

      log p(x) = log p_base(z) + log_abs_det,   (z, log_abs_det) = flow(x).

- Pieces may change the shape of a sample (`Squeeze`); `output_shape(shape)` maps the
  shape of one input sample to the shape of one output sample, so a model can draw
  latents of the right shape for `inverse`.

Log-dets are accumulated in float32 even when the scale/translation networks run under
bf16 autocast (see `AffineCoupling`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bf16/float32, float64 for float64: the precision log-dets add up in."""
    return torch.promote_types(dtype, torch.float32)


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B] sum over every non-batch dimension, in at least float32."""
    return t.flatten(1).sum(1, dtype=wide_dtype(t.dtype))


def zero_log_det(x: torch.Tensor) -> torch.Tensor:
    """A zero log-det [B] on x's device, in at least float32."""
    return torch.zeros(x.shape[0], device=x.device, dtype=wide_dtype(x.dtype))


class Flow(nn.Module):
    """An invertible map with a tractable log-det-Jacobian (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: (y, log|det dy/dx| [B])."""
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent -> data: (x, log|det dx/dy| [B])."""
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one output sample for an input sample of `shape` (no batch dim)."""
        return tuple(shape)


class Composition(Flow):
    """Flows applied in order (`forward`) or in reverse order (`inverse`); log-dets add up.

    Behaves like a list of its pieces: `len(c)`, `c[i]`, iteration.
    """

    def __init__(self, *flows: Flow) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = zero_log_det(x)
        for flow in self.flows:
            x, log_det = flow(x)
            total = total + log_det
        return x, total

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = zero_log_det(y)
        for flow in reversed(self.flows):
            y, log_det = flow.inverse(y)
            total = total + log_det
        return y, total

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for flow in self.flows:
            shape = flow.output_shape(shape)
        return tuple(shape)

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, index: int) -> Flow:
        return self.flows[index]

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)
