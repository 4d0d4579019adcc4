"""Vector quantization of a feature map against a learned codebook (VQ-VAE).

van den Oord et al. 2017: every D-vector z_e[b, :, h, w] of the encoder output is replaced
by its nearest codebook row e_k, k = argmin_j ||z_e - e_j||^2. Gradients skip the
non-differentiable lookup by the straight-through estimator z_e + (z_q - z_e).detach()
(forward value z_q, gradient of the identity); the codebook learns from
||sg[z_e] - z_q||^2 and the encoder is held near its codes by beta ||z_e - sg[z_q]||^2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Quantized(NamedTuple):
    """Output of `VectorQuantizer.forward`.

    z: [B, D, H, W] the codes' vectors, straight-through (value z_q, gradient to z_e).
    codes: [B, H, W] long code indices.
    codebook_loss: mean of (z_q - sg[z_e])^2: moves the codebook toward the encoder.
    commitment_loss: mean of (z_e - sg[z_q])^2: holds the encoder near its codes.
    """

    z: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """K learned D-dimensional codes, initialized uniformly in [-1/K, 1/K] (the seed's)."""

    def __init__(self, num_codes: int, dim: int) -> None:
        super().__init__()
        self.num_codes, self.dim = int(num_codes), int(dim)
        bound = 1.0 / self.num_codes
        self.codebook = nn.Parameter(torch.empty(self.num_codes, self.dim).uniform_(-bound, bound))

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """[B, D, H, W] -> [B, H, W] index of the nearest code: argmin_j ||e_j||^2 - 2 z.e_j
        (||z||^2 is the same for every j), one matrix product."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, self.dim)
        codebook = self.codebook.to(flat.dtype)
        scores = torch.addmm(codebook.square().sum(1), flat, codebook.T, alpha=-2.0)
        return scores.argmin(1).view(z_e.shape[0], *z_e.shape[2:])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, H, W] code indices -> [B, D, H, W] their vectors."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> Quantized:
        codes = self.nearest(z_e.detach())
        z_q = self.lookup(codes).to(z_e.dtype)
        return Quantized(
            z=z_e + (z_q - z_e).detach(),
            codes=codes,
            codebook_loss=F.mse_loss(z_q, z_e.detach()),
            commitment_loss=F.mse_loss(z_e, z_q.detach()),
        )


def perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the codes' histogram: 1 when one code is used, K when all K are used
    equally often."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).float() / codes.numel()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
