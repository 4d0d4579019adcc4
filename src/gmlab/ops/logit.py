"""The squeezed logit map of the unit interval and its inverse, with exact log-derivatives.

    p = alpha + (1 - 2 alpha) y,   z = log p - log(1 - p),
    log dz/dy = log(1 - 2 alpha) - log p - log(1 - p)   (per element).

1 - p is formed as alpha + (1 - 2 alpha)(1 - y), exact in float32 where y is near 1
(log1p(-p) would see p rounded to ~6e-8, which matters once alpha is small).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_alpha(alpha: float) -> float:
    """alpha as a float; ValueError unless 0 <= alpha < 0.5 (0 needs y strictly inside)."""
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
    return float(alpha)


def squeezed_logit(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y [*] in [0, 1] -> (z [*], log dz/dy [*])."""
    squeeze = 1.0 - 2.0 * alpha
    log_p = torch.log(alpha + squeeze * y)
    log_1mp = torch.log(alpha + squeeze * (1.0 - y))
    return log_p - log_1mp, math.log1p(-2.0 * alpha) - (log_p + log_1mp)


def squeezed_sigmoid(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse: z [*] -> (y [*], log dy/dz [*])."""
    y = (torch.sigmoid(z) - alpha) / (1.0 - 2.0 * alpha)
    return y, F.logsigmoid(z) + F.logsigmoid(-z) - math.log1p(-2.0 * alpha)
