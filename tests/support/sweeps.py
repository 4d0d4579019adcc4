"""Test-only helpers for sweeps and resumes: a crash that happens once, and the run records."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L


class SigkillOnce(L.Callback):
    """SIGKILL the process at (epoch, batch) unless `marker` exists; the marker is created
    first, so the identical command started again runs through."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        at = (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        if at and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def kill_once(marker: Path, epoch: int = 2, batch: int = 2) -> list[str]:
    """Overrides that add `SigkillOnce` to a run."""
    return [
        "+callbacks.kill._target_=support.sweeps.SigkillOnce",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch={batch}",
        f"+callbacks.kill.marker={marker}",
    ]


def record(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
