"""The simplest density baseline: an independent Gaussian per dimension.

log p(x) = sum_i log N(x_i; mu_i, sigma_i^2), sigma_i = softplus(rho_i) + floor.
Any model in the zoo should beat its bits/dim; the framework tests train it in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gmlab.distributions.normal import LOG_2PI
from gmlab.models.base import GenerativeModel
from gmlab.models.parts import preset_part, scheduler_or_preset


class DiagonalGaussian(GenerativeModel):
    """Factorized Gaussian over the preprocessed input.

    Args:
        data_shape: shape of one sample.
        preprocess: `Preprocessor` options.
        std_floor: lower bound of every standard deviation (model units).
        optimizer, lr_scheduler: part configs (`GmlabModule.configure_optimizers`; None:
            conf/model/gaussian.yaml's; an empty lr_scheduler: constant lr).
    """

    checkpoint_version = 1  # 0: a flat `lr`

    def __init__(
        self,
        data_shape,
        preprocess: dict | None = None,
        std_floor: float = 1e-3,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
    ) -> None:
        super().__init__(data_shape, preprocess)
        self.save_hyperparameters()
        self.hparams["optimizer"] = optimizer or preset_part("gaussian", "optimizer")
        self.hparams["lr_scheduler"] = scheduler_or_preset(lr_scheduler, "gaussian")
        self.mean = torch.nn.Parameter(torch.zeros(self.data_shape))
        self.raw_std = torch.nn.Parameter(torch.zeros(self.data_shape))

    @property
    def std(self) -> torch.Tensor:
        return F.softplus(self.raw_std) + self.hparams.std_floor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *data_shape] model-space inputs -> [B] log-density (nats)."""
        z = (x - self.mean) / self.std
        per_dim = -0.5 * z.square() - torch.log(self.std) - 0.5 * LOG_2PI
        return per_dim.flatten(1).sum(1)

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        x, log_det = self.prepare(x_raw)
        return self.log_prob(x) + log_det

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, log_det = self.prepare(batch[0], train=True)
        loss = self.to_bits(self.log_prob(x) + log_det).mean()
        self.check_finite(loss, "train/loss", batch_idx)
        self.log_step({"train/loss": loss}, x.shape[0], prog_bar=True)
        return loss

    def sample(self, n: int) -> torch.Tensor:
        eps = torch.randn((n, *self.data_shape), device=self.mean.device)
        return self.to_data(self.mean + self.std * eps)
