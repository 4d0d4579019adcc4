"""Per-epoch reseeding: makes a resumed run draw the same random numbers as an
uninterrupted one (dequantization noise, dropout, sampling), epoch for epoch."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSeed(L.Callback):
    """Seed python, numpy and torch with f(seed, epoch, rank) at the start of every
    training epoch, and with f(seed, rank) before testing.

    Lightning restores the epoch counter, weights and optimizer state from a checkpoint but
    not the global RNG state; reseeding per epoch closes that gap so that `seed=...` with
    `trainer.deterministic=true` gives bitwise-repeatable CPU runs, resumed or not.
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def _derive(self, trainer: L.Trainer, epoch: int) -> int:
        return (int(self.seed) * 1_000_003 + epoch * 1009 + trainer.global_rank) % 2**63

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            _seed_all(self._derive(trainer, trainer.current_epoch))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            _seed_all(self._derive(trainer, 10_000_000))
