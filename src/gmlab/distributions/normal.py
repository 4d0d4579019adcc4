"""Gaussian log-density helpers shared by every density in `gmlab.distributions`."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def diag_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim (broadcasting)."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def std_normal_log_prob_flat(z: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B] log N(z; 0, I) summed over every non-batch dimension."""
    return std_normal_log_prob(z.flatten(1))
