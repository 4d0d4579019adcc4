"""Checkpointing: best-by-the-model's-metric plus `last.ckpt`, written atomically, and
`last.ckpt` written when a signal ends training (`gmlab.utils.signals`)."""

from __future__ import annotations

from pathlib import Path
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gmlab.utils.runs import write_atomic
from gmlab.utils.signals import GUARD, Interrupted


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` that (1) monitors the model's own metric when `monitor` is None and
    (2) never leaves a half-written file: each checkpoint is written to `<path>.partial`
    beside it (not in $TMPDIR, where Lightning's writer stages it) and moved over the old
    file with `os.replace` (atomic on POSIX), so a crash mid-write keeps the previous
    `last.ckpt` loadable, and a failed write (a full disk) leaves no partial file;
    (3) finds its files in its own folder: a resumed run whose folder was moved maps the
    recorded best / last / top-k paths into `dirpath`, so testing uses the best checkpoint
    beside it and not the last weights.

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

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning's restore, with the recorded paths moved into this `dirpath` when the
        checkpoint was written in another folder (a moved or copied run folder)."""
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path: str) -> str:
                if path and Path(path).parent == Path(old):
                    return str(Path(self.dirpath) / Path(path).name)
                return path

            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = moved(state_dict[key])
            if "best_k_models" in state_dict:
                state_dict["best_k_models"] = {
                    moved(k): v for k, v in state_dict["best_k_models"].items()
                }
        super().load_state_dict(state_dict)

    def save_last_now(self, trainer: L.Trainer) -> None:
        """Write `last.ckpt` with the current state (a signal's safe point)."""
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        if trainer.is_global_zero:
            write_atomic(Path(filepath), lambda handle: torch.save(checkpoint, handle))
        trainer.strategy.barrier("gmlab_checkpoint_replace")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class SaveOnSignal(L.Callback):
    """Hold a signal (`gmlab.utils.signals.GUARD`) during training until the current step or
    validation batch has ended, then end the run with `Interrupted`; on the way out
    (`on_exception`: also Lightning's own `SIGTERMException`) write `last.ckpt`, so that the
    run resumes from the step it stopped at."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        GUARD.deferred = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        GUARD.deferred = False
        GUARD.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        GUARD.check()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        GUARD.check()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # at a safe point: our Interrupted, or Lightning's SIGTERMException (a SystemExit)
        safe = GUARD.deferred and isinstance(exception, (Interrupted, SystemExit))
        GUARD.deferred = False
        if (
            safe
            and GUARD.received is not None
            and isinstance(trainer.checkpoint_callback, Checkpoint)
        ):
            trainer.checkpoint_callback.save_last_now(trainer)
