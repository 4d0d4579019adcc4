"""Checkpointing: best-by-the-model's-metric plus `last.ckpt`, written atomically."""

from __future__ import annotations

import os
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` that (1) monitors the model's own metric when `monitor` is None and
    (2) never leaves a half-written file: each checkpoint is written to `<path>.partial`
    and moved over the old file with `os.replace` (atomic on POSIX), so a crash mid-write
    keeps the previous `last.ckpt` loadable.

    The model names its metric with the class attributes `monitor` and `monitor_mode`
    (see `gmlab.models.base.GmlabModule`).
    """

    def __init__(self, *args, monitor: str | None = None, mode: str | None = None, **kwargs):
        self._follow_model = monitor is None
        super().__init__(*args, monitor=monitor, mode=mode or "min", **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._follow_model and getattr(pl_module, "monitor", None):
            self.monitor = pl_module.monitor
            mode = getattr(pl_module, "monitor_mode", "min")
            inf = torch.tensor(torch.inf)
            self.kth_value, self.mode = (inf, "min") if mode == "min" else (-inf, "max")

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        """Try the top-k save, then mark the step as saved so that the caller rewrites
        `last.ckpt` too: Lightning 2.6 refreshes `last.ckpt` only when a top-k file was
        written, which leaves it stale (and a resume loses epochs) once the metric stops
        improving."""
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write `last.ckpt` with the final weights when training stopped after the last
        save (`max_steps` or `max_time` reached mid-epoch, epochs without validation):
        Lightning 2.6 writes it here only if no checkpoint was written at all, so those
        last steps were lost and a resume repeated them."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, filepath)
        trainer.strategy.barrier("gmlab_checkpoint_replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
