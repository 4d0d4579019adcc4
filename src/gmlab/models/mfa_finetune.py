"""Gradient fine-tuning of an MFA / MPPCA on the negative log-likelihood (after EM)."""

from __future__ import annotations

import math

import torch

from gmlab.errors import ConfigError
from gmlab.models.mfa import MFABase, MFAModel
from gmlab.models.parts import preset_part, scheduler_or_preset
from gmlab.utils.checkpoint import load_model


class MFAFinetune(MFABase):
    """All mixture parameters trained by a gradient optimizer (default Adam, lr 1e-4: the
    MFA paper's TensorFlow recipe) on -log p(x) / D per batch, starting from an EM fit.

    After every optimizer step the log noise variances are projected back onto
    log(noise_floor).

    Args (`mixture`: `MFABase`'s, by keyword; its size is read from `em_ckpt` when given):
        em_ckpt: checkpoint of a `MFAModel` (`gmlab-train experiment=mfa_...`) whose
            parameters are the starting point; None: `MFABase`'s own initialisation. Read
            on the first build only: the hyperparameters then hold the fitted size and
            `em_ckpt=None`, so this model's checkpoints rebuild without that file.
        optimizer: the optimizer's part config (`_target_`, `_partial_: true`, options;
            default: conf/model/mfa_finetune.yaml's).
        lr_scheduler: lr scheduler part config (see `gmlab.models.base`; None: the preset's,
            none; an empty one: constant lr).
    """

    def __init__(
        self,
        data_shape,
        em_ckpt: str | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        **mixture,
    ) -> None:
        start = _em_model(em_ckpt, data_shape) if em_ckpt else None
        if start is not None:  # the EM fit's size and noise type
            m = start.mixture
            mixture.update(n_components=m.n_components, n_factors=m.n_factors, noise=m.noise)
        optimizer = optimizer or preset_part("mfa_finetune", "optimizer")
        lr_scheduler = scheduler_or_preset(lr_scheduler, "mfa_finetune")
        super().__init__(data_shape, **mixture)
        self.hparams["em_ckpt"] = None
        if start is not None:
            self.mixture.load_state_dict(start.mixture.state_dict())
            with torch.no_grad():
                self.mixture.log_noise.clamp_(min=math.log(self.hparams.noise_floor))
            self.initialized.fill_(True)

    def optimizer_parameters(self):
        return self.mixture.parameters()

    def training_step(self, batch, batch_idx: int):
        x, log_det = self.prepare(self.batch_inputs(batch), train=True)
        ll = self.mixture.log_prob(self.flat(x)) + log_det
        loss = -ll.mean() / self.num_dims
        self.check_finite(loss, "train/loss", batch_idx)
        log = dict(on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.log("train/ll", ll.mean().detach(), prog_bar=True, **log)
        self.log("train/bpd", self.to_bits(ll.detach()).mean(), **log)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Project the noise variances back onto the floor after the optimizer step."""
        with torch.no_grad():
            self.mixture.log_noise.clamp_(min=math.log(self.hparams.noise_floor))


def _em_model(path: str, data_shape) -> MFAModel:
    """The EM-trained model of `model.em_ckpt`, checked against the data shape."""
    model = load_model(path)
    if not isinstance(model, MFAModel):
        raise ConfigError(f"model.em_ckpt={path} holds a {type(model).__name__}, not an MFAModel")
    if tuple(model.data_shape) != tuple(int(s) for s in data_shape):
        raise ConfigError(
            f"model.em_ckpt={path} was trained on {list(model.data_shape)} samples, the data "
            f"are {list(data_shape)}"
        )
    return model
