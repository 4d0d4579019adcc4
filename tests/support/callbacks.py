"""Test-only callbacks and DataModules used through Hydra `_target_` overrides."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch

from gmlab.data.base import InMemoryDataModule


class SigkillAt(L.Callback):
    """Kill the training process with SIGKILL at (epoch, batch): a crash nothing can catch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class PointsDataModule(InMemoryDataModule):
    """Seeded 2-D Gaussian points; `nan_at=(epoch, batch)` poisons that training batch."""

    def __init__(self, n: int = 512, nan_at: tuple[int, int] | None = None, **kwargs) -> None:
        kwargs.setdefault("shape", (2,))
        super().__init__(**kwargs)
        self.n = n
        self.nan_at = tuple(nan_at) if nan_at else None
        self._seen: dict[int, int] = {}

    def load_splits(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 2, generator=gen) * torch.tensor([2.0, 0.5]) + 1.0
        y = torch.zeros(self.n, dtype=torch.long)
        half = self.n // 2
        return {"train": (x[:half], y[:half]), "test": (x[half:], y[half:])}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        trainer = self.trainer
        if self.nan_at and trainer is not None and trainer.training:
            epoch, index = self.nan_at
            seen = self._seen.get(trainer.current_epoch, 0)
            self._seen[trainer.current_epoch] = seen + 1
            if trainer.current_epoch == epoch and seen == index:
                x, y = batch
                x = x.clone()
                x[0, 0] = float("nan")
                return x, y
        return batch
