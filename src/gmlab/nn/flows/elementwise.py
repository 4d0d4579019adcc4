"""Element-wise flows: the logit transform."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmlab.nn.flows.base import Flow, sum_except_batch


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
            raise ValueError(f"Logit alpha must be in [0, 0.5), got {alpha}")
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
