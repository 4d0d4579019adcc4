"""Gaussian log-density helpers shared by every density in `gmlab.distributions`."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def diag_normal_rsample(
    mu: torch.Tensor, logvar: torch.Tensor, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised draw z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), and its
    log N(z; mu, diag(exp(logvar))) summed over the last dim.

    mu, logvar [B, D] -> z [B, D] and log q [B] (or [n, B, D] and [n, B] with n draws).
    The density is taken from eps, -(eps^2 + logvar + log 2 pi) / 2, the same value and
    gradient as from z, but with no division by the variance: finite for any logvar,
    where (z - mu)^2 / exp(logvar) is 0 / 0 once exp(logvar / 2) underflows.
    """
    shape = mu.shape if n is None else (n, *mu.shape)
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, -0.5 * (eps.square() + logvar + LOG_2PI).sum(-1)


def diag_normal_rsample_stop(
    mu: torch.Tensor, logvar: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`diag_normal_rsample` with n draws whose log q(z) treats (mu, logvar) as constants:
    the gradient reaches them only through z (the path derivative of Roeder et al. 2017
    and DReG, Tucker et al. 2018). z [n, B, D], log q [n, B]; the values equal
    `diag_normal_rsample`'s for the same eps."""
    eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    path = (z - mu.detach()) * torch.exp(-0.5 * logvar.detach())  # = eps, gradient via z
    u = eps + (path - path.detach())
    return z, -0.5 * (u.square() + logvar.detach() + LOG_2PI).sum(-1)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def std_normal_log_prob_flat(z: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B] log N(z; 0, I) summed over every non-batch dimension."""
    return std_normal_log_prob(z.flatten(1))
