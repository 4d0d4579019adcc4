"""MADE (Germain et al. 2015) and the affine autoregressive flow of the VLAE prior.

`MADE` masks the weights of an MLP so that output i (of every output group) depends only
on inputs 1..i-1 (natural ordering). `MADEFlow` turns it into the invertible map of the
vae-pytorch's VLAE prior:

    eps = z * sigma(z) + mu(z),    sigma_i, mu_i functions of z_<i,

whose Jacobian d eps / d z is lower triangular with diagonal sigma, so
log|det d eps/dz| = sum_i log sigma_i. The inverse solves one dimension at a time
(D passes of the network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gmlab.nn.flows.base import Flow


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder: [B, D] -> [B, num_outputs, D], output [:, g, i] a function of x_<i.

    Hidden units get degrees 1..D-1 in turn; a hidden unit of degree m sees inputs 1..m,
    and output i sees hidden units of degree < i (so output 1 is a constant).
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (512, 512), num_outputs: int = 2
    ) -> None:
        super().__init__()
        d = int(in_features)
        self.in_features, self.num_outputs = d, int(num_outputs)
        degrees = [torch.arange(1, d + 1)]
        for h in hidden:
            degrees.append(torch.arange(int(h)) % max(d - 1, 1) + 1)
        layers: list[nn.Module] = []
        for prev, cur in zip(degrees[:-1], degrees[1:], strict=True):
            layers += [MaskedLinear(len(prev), len(cur), cur[:, None] >= prev[None, :]), nn.ReLU()]
        out_deg = torch.arange(1, d + 1).repeat(self.num_outputs)
        self.out = MaskedLinear(len(degrees[-1]), len(out_deg), out_deg[:, None] > degrees[-1])
        self.net = nn.Sequential(*layers, self.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.num_outputs, self.in_features)


class MADEFlow(Flow):
    """eps = z * exp(s(z)) + mu(z) with a MADE for (mu, s); starts as the identity.

    `forward` is the normalizing direction z -> eps, `inverse` the generative one
    (the `gmlab.nn.flows` protocol)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512)) -> None:
        super().__init__()
        self.dim = int(dim)
        self.made = MADE(self.dim, hidden, num_outputs=2)
        nn.init.zeros_(self.made.out.weight)
        nn.init.zeros_(self.made.out.bias)

    def shift_log_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.made(z).unbind(1)
        return mu, log_sigma

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, D] -> (eps [B, D], log|det d eps/dz| [B])."""
        mu, log_sigma = self.shift_log_scale(z)
        return z * log_sigma.exp() + mu, log_sigma.sum(-1)

    def inverse(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eps [B, D] -> (z [B, D], log|det dz/d eps| [B]), one dimension per pass."""
        z = torch.zeros_like(eps)
        for i in range(self.dim):
            mu, log_sigma = self.shift_log_scale(z)
            z = z.clone()
            z[:, i] = (eps[:, i] - mu[:, i]) * torch.exp(-log_sigma[:, i])
        mu, log_sigma = self.shift_log_scale(z)
        return z, -log_sigma.sum(-1)
