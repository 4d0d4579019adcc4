"""Per-epoch reseeding: makes a resumed run draw the same random numbers as an
uninterrupted one (dequantization noise, dropout, sampling), epoch for epoch, and from
the step it stopped at when it resumes mid-epoch."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_states() -> dict:
    """The global generators' states as tensors, ints and lists (a checkpoint that loads
    with `weights_only=True`)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class EpochSeed(L.Callback):
    """Seed python, numpy and torch with f(seed, epoch, rank) at the start of every
    training epoch, and with f(seed, rank) before testing.

    Lightning restores the epoch counter, weights and optimizer state from a checkpoint but
    not the global RNG state; reseeding per epoch closes that gap so that `seed=...` with
    `trainer.deterministic=true` gives bitwise-repeatable CPU runs, resumed or not.
    A checkpoint also holds the generators' states when it was written (`state_dict`): a
    run resumed mid-epoch (a signal's `last.ckpt`), where no epoch starts, continues them
    (single process; under DDP only rank 0's states are saved, so ranks continue with
    fresh draws there).
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed
        self._restored: dict | None = None  # generator states of a checkpoint
        self._epoch: int | None = None  # the training epoch seeded last

    def state_dict(self) -> dict:
        return {"rng": _rng_states()} if self.seed is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict.get("rng")

    def _derive(self, trainer: L.Trainer, epoch: int) -> int:
        return (int(self.seed) * 1_000_003 + epoch * 1009 + trainer.global_rank) % 2**63

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            _seed_all(self._derive(trainer, trainer.current_epoch))
            self._epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """The first batch of a resumed run, where Lightning starts no epoch (a mid-epoch
        checkpoint; one written after an epoch's last step goes on to the next epoch
        without `on_train_epoch_start`): continue the checkpoint's states mid-epoch, else
        seed the epoch. The batch was fetched without random draws (`IndexBatchLoader`)."""
        if self.seed is None or self._epoch == trainer.current_epoch:
            return
        restored, self._restored = self._restored, None
        if batch_idx > 0 and restored is not None and trainer.world_size == 1:
            _set_rng_states(restored)
        else:
            _seed_all(self._derive(trainer, trainer.current_epoch))
        self._epoch = trainer.current_epoch

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            _seed_all(self._derive(trainer, 10_000_000))
