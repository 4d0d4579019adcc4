"""Element-wise flows: the logit transform."""

from __future__ import annotations

import torch

from gmlab.nn.flows.base import Flow, sum_except_batch
from gmlab.ops.logit import check_alpha, squeezed_logit, squeezed_sigmoid


class Logit(Flow):
    """y in [0,1] -> z = logit(alpha + (1 - 2 alpha) y), with its exact log-det
    (`gmlab.ops.logit`).

    alpha keeps the logit away from 0 and 1: with the default 0.05 the logit sees
    [0.05, 0.95] (the same range as the RealNVP reference implementation's
    `alpha/2 + (1 - alpha) y` with its alpha = 0.1); 1e-6 is the usual MNIST choice.

    Args:
        alpha: squeeze of the unit interval, 0 <= alpha < 0.5 (0 needs y strictly inside).
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = squeezed_logit(y, self.alpha)
        return z, sum_except_batch(log_det)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, log_det = squeezed_sigmoid(z, self.alpha)
        return y, sum_except_batch(log_det)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
