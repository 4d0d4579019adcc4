"""Element-wise pieces: uniform dequantization and the logit transform."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmlab.errors import ConfigError
from gmlab.nn.flows.base import Flow, sum_except_batch


class UniformDequantization(Flow):
    """Integer pixels -> the unit cube: y = (x + u) / levels, u ~ U[0,1)^D.

    The noise makes this a surjection rather than a bijection: `inverse` floors back to the
    exact integers (so `inverse(forward(x)) == x`). The log-det is that of the rescaling
    x + u -> y, -D ln(levels), so `log p(y) + log_abs_det` is the log-density of x + u and
    its negative, divided by D ln 2, is directly the bits/dim.

    gmlab's models dequantize in `gmlab.data.Preprocessor` instead (log p is then a density
    on the unit cube and `gmlab.metrics.bits_per_dim` adds the D ln 256); this piece is for
    building free-standing flows over raw pixels.

    Args:
        num_levels: integer levels of the raw data (256 for 8-bit images).
        noise: add uniform noise (True) or use bin centres u = 1/2 (False).
    """

    def __init__(self, num_levels: int = 256, noise: bool = True) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.noise = noise

    def _log_det(self, x: torch.Tensor, sign: float) -> torch.Tensor:
        d = x[0].numel()
        return torch.full((x.shape[0],), sign * d * math.log(self.num_levels), device=x.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()
        u = torch.rand_like(x) if self.noise else torch.full_like(x, 0.5)
        return (x + u) / self.num_levels, self._log_det(x, -1.0)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.floor(y * self.num_levels).clamp(0, self.num_levels - 1)
        return x, self._log_det(y, 1.0)


class Logit(Flow):
    """y in [0,1] -> z = logit(alpha + (1 - 2 alpha) y), with its exact log-det.

    alpha keeps the logit away from 0 and 1: with the default 0.05 the logit sees
    [0.05, 0.95] (the same range as the realnvp seed's `alpha/2 + (1 - alpha) y` with its
    alpha = 0.1). Per dimension, log dz/dy = log(1 - 2 alpha) - log p - log(1 - p) with
    p = alpha + (1 - 2 alpha) y. 1 - p is formed as alpha + (1 - 2 alpha)(1 - y), exact in
    float32 where y is near 1 (log1p(-p) would see p rounded to ~6e-8, which matters once
    alpha is small: 1e-6 is the usual MNIST choice).

    Args:
        alpha: squeeze of the unit interval, 0 <= alpha < 0.5 (0 needs y strictly inside).
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ConfigError(f"Logit alpha (model.alpha) must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squeeze = 1.0 - 2.0 * self.alpha
        log_p = torch.log(self.alpha + squeeze * y)
        log_1mp = torch.log(self.alpha + squeeze * (1.0 - y))
        z = log_p - log_1mp
        per_dim = -(log_p + log_1mp)
        return z, sum_except_batch(per_dim) + y[0].numel() * math.log1p(-2.0 * self.alpha)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(z)
        y = (p - self.alpha) / (1.0 - 2.0 * self.alpha)
        per_dim = F.logsigmoid(z) + F.logsigmoid(-z)
        return y, sum_except_batch(per_dim) - z[0].numel() * math.log1p(-2.0 * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
