"""The simplest density baseline: an independent Gaussian per dimension, fitted by Adam.

log p(x) = sum_i log N(x_i; mu_i, sigma_i^2), sigma_i = softplus(rho_i) + floor.
Any model in the zoo should beat its bits/dim; the framework tests train it in seconds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gmlab.models.base import GenerativeModel


class DiagonalGaussian(GenerativeModel):
    """Factorized Gaussian over the preprocessed input.

    Args:
        data_shape: shape of one sample.
        preprocess: `Preprocessor` options.
        lr: Adam learning rate.
        std_floor: lower bound of every standard deviation (model units).
    """

    def __init__(
        self,
        data_shape,
        preprocess: dict | None = None,
        lr: float = 1e-2,
        std_floor: float = 1e-3,
    ) -> None:
        super().__init__(data_shape, preprocess)
        self.save_hyperparameters()
        self.mean = torch.nn.Parameter(torch.zeros(self.data_shape))
        self.raw_std = torch.nn.Parameter(torch.zeros(self.data_shape))

    @property
    def std(self) -> torch.Tensor:
        return F.softplus(self.raw_std) + self.hparams.std_floor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *data_shape] model-space inputs -> [B] log-density (nats)."""
        z = (x - self.mean) / self.std
        per_dim = -0.5 * z.square() - torch.log(self.std) - 0.5 * math.log(2 * math.pi)
        return per_dim.flatten(1).sum(1)

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        x, log_det = self.prepare(x_raw)
        return self.log_prob(x) + log_det

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, log_det = self.prepare(batch[0], train=True)
        loss = self.to_bits(self.log_prob(x) + log_det).mean()
        self.check_finite(loss, "train/loss", batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def sample(self, n: int) -> torch.Tensor:
        eps = torch.randn((n, *self.data_shape), device=self.mean.device)
        return self.preprocess.to_pixels(self.mean + self.std * eps)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
