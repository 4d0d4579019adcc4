"""Test-only callbacks for signals and faults: a signal sent once at a given step or between
two jobs of a multirun, and steps slowed down so that a test can act while a run trains."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback


class SignalOnce(L.Callback):
    """Send `signum` (a name, e.g. SIGUSR1) to this process at (epoch, batch) unless
    `marker` exists; the marker is created first, so the same command runs through."""

    def __init__(self, epoch: int, batch: int, marker: str, signum: str = "SIGTERM") -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)
        self.signum = signal.Signals[signum]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        at = (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        if at and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)


class SlowSteps(L.Callback):
    """Sleep `seconds` after every training step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


def signal_once(marker: Path, epoch: int, batch: int, signum: str) -> list[str]:
    """Overrides that add `SignalOnce` to a run."""
    return [
        "+callbacks.signal._target_=support.faults.SignalOnce",
        f"+callbacks.signal.epoch={epoch}",
        f"+callbacks.signal.batch={batch}",
        f"+callbacks.signal.marker={marker}",
        f"+callbacks.signal.signum={signum}",
    ]


class SignalAfterFirstJob(Callback):
    """A Hydra callback: send `signum` (a name) to this process when a job of a multirun
    ends, between two jobs of Hydra's basic launcher, unless `marker` exists (created
    first, so the same command runs through)."""

    def __init__(self, marker: str, signum: str = "SIGTERM") -> None:
        self.marker, self.signum = Path(marker), signal.Signals[signum]

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), self.signum)


class FillDisk(L.Callback):
    """When training starts, fill the file system of `path` by writing `path` until the
    disk is full (the run's record and its reserve are written by then)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module):
        chunk = bytes(64 * 1024)
        with open(self.path, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(chunk)
            except OSError:
                pass
            try:
                while True:
                    handle.write(b"0")
            except OSError:
                pass


class KillAfterFinished(L.Callback):
    """SIGKILL this process at the first training step once `finished` jobs of `sweep_dir`
    record status finished, unless `marker` exists (created first)."""

    def __init__(self, sweep_dir: str, finished: int, marker: str) -> None:
        self.sweep_dir, self.finished, self.marker = Path(sweep_dir), finished, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        done = [p for p in self.sweep_dir.glob("*/run.json") if '"finished"' in p.read_text()]
        if len(done) >= self.finished and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
