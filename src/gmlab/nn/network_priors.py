"""Priors built on networks: the VLAE's MADE-flow prior and the VampPrior."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gmlab.distributions.normal import std_normal_log_prob
from gmlab.distributions.priors import (
    EncoderAccess,
    Prior,
    mixture_log_prob,
    sample_mixture,
    uniform_log_weights,
)
from gmlab.nn.made import MADEFlow


class FlowPrior(Prior):
    """VLAE prior: a MADE affine autoregressive flow z -> eps onto N(0, I),
    log p(z) = log N(eps; 0, I) + log|det d eps/dz|."""

    def __init__(self, dim: int, hidden: Sequence[int] = (512, 512)) -> None:
        super().__init__(dim)
        self.flow = MADEFlow(dim, hidden)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        eps, log_det = self.flow(z)
        return std_normal_log_prob(eps) + log_det

    def sample(self, n: int) -> torch.Tensor:
        return self.flow.inverse(self.standard_normal(n))[0]


class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), the encoder's
    diagonal Gaussian posteriors at K learned pseudo-inputs u_k.

    u_k = low + (high - low) * hardtanh_[0,1](r_k) lies in the model-space input range, with
    the raw parameters r_k ~ N(init_mean, init_std^2) (per input element) created when the
    model attaches its encoder.

    Args:
        dim: latent size D.
        n_components: K, the number of pseudo-inputs.
        init_mean, init_std: the raw pseudo-inputs' initial distribution, in units of the
            input range (0: its low end, 1: its high end).
    """

    def __init__(
        self, dim: int, n_components: int = 500, init_mean: float = 0.05, init_std: float = 0.01
    ) -> None:
        super().__init__(dim)
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.init_mean, self.init_std = float(init_mean), float(init_std)
        self.encoder: EncoderAccess | None = None
        self.pseudo_raw: nn.Parameter | None = None

    def attach(self, encoder: EncoderAccess) -> None:
        """Keep the encoder and create the K pseudo-inputs of its input shape."""
        self.encoder = encoder
        raw = torch.randn(self.n_components, *encoder.input_shape) * self.init_std
        self.pseudo_raw = nn.Parameter(raw + self.init_mean)

    def pseudo_inputs(self) -> torch.Tensor:
        """[K, *input_shape] the pseudo-inputs u_k in the model-space range (after `attach`)."""
        lo, hi = self.encoder.low, self.encoder.high
        return lo + (hi - lo) * torch.clamp(self.pseudo_raw, 0.0, 1.0)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The K posteriors q(z | u_k): (means, logvars), each [K, D]."""
        if self.encoder is None:
            raise RuntimeError("VampPrior needs the model's encoder: call attach() first")
        mu, logvar = self.encoder.encode(self.pseudo_inputs())
        return mu, logvar

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.components()
        return mixture_log_prob(z, mu, logvar, uniform_log_weights(self.n_components, z))

    def sample(self, n: int) -> torch.Tensor:
        mu, logvar = self.components()
        return sample_mixture(n, mu, logvar, uniform_log_weights(self.n_components, mu))
