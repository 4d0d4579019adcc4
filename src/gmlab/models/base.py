"""Base LightningModules: the model protocol that eval, callbacks and metrics rely on.

`GmlabModule` gives every gmlab model its checkpoint metadata (so `gmlab-eval` can
rebuild any checkpoint), NaN/inf guards with clear messages, the metric it is
checkpointed on, `figures()` for the image-grid callback, and the optional step-wise
learning-rate schedule (`use_lr_schedule`).

`GenerativeModel` adds the density-model protocol of DESIGN.md:
  - `log_likelihood(x_raw) -> [B]`: log p(y) in nats of the dequantized input y on the
    unit cube (exact where the model has one, else a documented bound), or a log-pmf
    for binarized data;
  - `sample(n) -> [n, *data_shape]` in the dataset's own pixel range;
  - `reconstruct(x_raw, mask=None)` where the model has an encoder or a conditional;
and shared validation/test steps that log `{stage}/nll` (nats) and `{stage}/bpd`.
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch
import torchvision

from gmlab.data.preprocess import Preprocessor
from gmlab.distributions.likelihoods import Likelihood, build_likelihood
from gmlab.errors import NonFiniteError, ShapeError
from gmlab.metrics.bpd import bits_per_dim, nats_to_bits
from gmlab.utils.lr_schedule import WarmupStableDecay


class GmlabModule(L.LightningModule):
    """Shared behaviour of all gmlab LightningModules.

    Class attributes `monitor` / `monitor_mode` name the metric that picks the best
    checkpoint (`gmlab.callbacks.Checkpoint` reads them).
    """

    monitor: str = "val/bpd"
    monitor_mode: str = "min"
    lr_schedule: WarmupStableDecay | None = None

    def use_lr_schedule(self, options: dict | None) -> None:
        """Train with lr = hparams.lr * factor(global step) (`WarmupStableDecay` options:
        warmup_steps, decay_start, decay_steps, min_factor; empty: constant lr).

        The lr is set before every optimizer step from the trainer's global step, so the
        schedule keeps no state and a run resumed from any checkpoint follows the same
        curve. For models with one optimizer whose lr is `hparams.lr`.
        """
        self.lr_schedule = WarmupStableDecay.from_config(options)

    def check_finite(self, value: torch.Tensor, metric: str, batch_idx: int | None = None) -> None:
        """Raise `NonFiniteError` naming the metric, stage and batch if `value` has NaN/inf."""
        if torch.isfinite(value).all():
            return
        stage = "train"
        if self._trainer is not None:
            if self.trainer.sanity_checking or self.trainer.validating:
                stage = "validation"
            elif self.trainer.testing:
                stage = "test"
        where = f"{stage} batch {batch_idx}" if batch_idx is not None else stage
        epoch = f", epoch {self.current_epoch}" if self._trainer is not None else ""
        raise NonFiniteError(
            f"{metric} is not finite (NaN or inf) at {where}{epoch}. The run was stopped; "
            "the last checkpoint written before this batch is intact. Check the data for "
            "NaN/inf values, or lower the learning rate / raise the variance floor."
        )

    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named images [3 or 1, H, W] in [0, 1] for TensorBoard/PNG, from a raw val batch."""
        return {}

    @staticmethod
    def batch_inputs(batch):
        """The inputs of a batch: its first element for (x, y) pairs, else the batch."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def check_batch(self, batch, batch_idx: int) -> None:
        """Stop on float inputs with NaN/inf, naming the batch (integer images cannot hold them)."""
        x = self.batch_inputs(batch)
        if torch.is_tensor(x) and x.is_floating_point():
            self.check_finite(x, "input batch", batch_idx)

    def on_train_batch_start(self, batch, batch_idx: int):
        self.check_batch(batch, batch_idx)
        if self.lr_schedule is not None:
            lr = self.lr_schedule.apply(
                self.trainer.optimizers[0], self.hparams.lr, self.global_step
            )
            self.log("train/lr", lr, batch_size=self.batch_inputs(batch).shape[0])

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self.check_batch(batch, batch_idx)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self.check_batch(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class and the run config so `gmlab-eval` can rebuild any checkpoint."""
        cls = type(self)
        checkpoint["gmlab"] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
        if getattr(self, "run_config", None):
            checkpoint["gmlab"]["config"] = self.run_config


class GenerativeModel(GmlabModule):
    """A density model over raw data batches of shape [B, *data_shape].

    Args:
        data_shape: shape of one sample, e.g. (1, 28, 28) or (2,).
        preprocess: keyword arguments of `gmlab.data.Preprocessor`.
    """

    def __init__(self, data_shape: tuple[int, ...] | list[int], preprocess: dict | None = None):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.preprocess = Preprocessor(**(preprocess or {}))

    # ------------------------------------------------------------ protocol
    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one sample."""
        return math.prod(self.data_shape)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] log p(y) in nats (unit-cube density of the dequantized batch, or log-pmf)."""
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        """[n, *data_shape] samples in the dataset's pixel range."""
        raise NotImplementedError

    def reconstruct(self, x_raw: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, *data_shape] reconstructions in pixel range (mask: True = observed)."""
        raise NotImplementedError

    def build_likelihood(self, name: str) -> Likelihood:
        """The decoder likelihood `name` over one sample, matched to the preprocessing (the
        model-space range for the discretized logistic's bins, and their number)."""
        return build_likelihood(
            name,
            len(self.data_shape),
            scale=self.preprocess.scale,
            num_levels=self.preprocess.num_levels or 256,
        )

    def bits_per_dim(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] bits/dim on the shared convention (log-pmf -> bits for binarized data)."""
        return self.to_bits(self.log_likelihood(x_raw))

    def to_bits(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """[B] nats -> bits/dim: the DESIGN.md convention for dequantized pixels, -log2 P / D
        for binarized data (a pmf) and for continuous points (a density: may be < 0)."""
        if self.preprocess.discrete or self.preprocess.continuous:
            return nats_to_bits(log_likelihood, self.num_dims)
        return bits_per_dim(log_likelihood, self.num_dims, self.preprocess.num_levels)

    # ------------------------------------------------------------- helpers
    def prepare(
        self, x_raw: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the raw batch's shape, then preprocess: (model input, log-det [B])."""
        if tuple(x_raw.shape[1:]) != self.data_shape:
            raise ShapeError(
                f"{type(self).__name__} expects batches of shape "
                f"[B, {', '.join(map(str, self.data_shape))}], got {list(x_raw.shape)}"
            )
        return self.preprocess(x_raw, train=train)

    # ----------------------------------------------------- shared eval steps
    def evaluate_batch(self, x_raw: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        """Log `{stage}/nll` and `{stage}/bpd` for one batch; returns log-likelihoods [B]."""
        return self.log_density_metrics(self.log_likelihood(x_raw), stage, batch_idx)

    def log_density_metrics(self, ll: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        """Log `{stage}/nll` and `{stage}/bpd` of a batch's log-likelihoods [B]; returns them."""
        self.check_finite(ll, f"{stage}/nll", batch_idx)
        bs = ll.shape[0]
        self.log(f"{stage}/nll", -ll.mean(), batch_size=bs, sync_dist=True, prog_bar=stage == "val")
        self.log(
            f"{stage}/bpd", self.to_bits(ll).mean(), batch_size=bs, sync_dist=True, prog_bar=True
        )
        return ll

    def validation_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch[0], "val", batch_idx)

    def test_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch[0], "test", batch_idx)

    # -------------------------------------------------------------- figures
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples and (where supported) reconstructions as image grids."""
        if not self.is_image:
            return {}
        out = {}
        levels = self.preprocess.num_levels - 1
        with contextlib.suppress(NotImplementedError):
            out["samples"] = image_grid(self.sample(64) / levels)
        try:
            x = x_raw[:32]
            rec = self.reconstruct(x)
            pairs = torch.stack([x.float() / levels, rec / levels], dim=1).flatten(0, 1)
            out["reconstructions"] = image_grid(pairs, nrow=16)
        except NotImplementedError:
            pass
        return out


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """[N, C, H, W] values in [0, 1] -> one [C', H', W'] grid image (clamped, on CPU)."""
    images = images.detach().float().cpu().clamp(0, 1)
    return torchvision.utils.make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
