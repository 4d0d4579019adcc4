"""Training metrics in every epoch, however few batches it has."""

from __future__ import annotations

import lightning as L


def batches_per_epoch(trainer: L.Trainer) -> int | None:
    """Training batches one epoch will run (the datamodule's loader, cut by
    `limit_train_batches`), or None when they cannot be counted before fitting."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return None
    try:
        n = len(datamodule.train_dataloader())
    except TypeError:  # an iterable dataset without a length
        return None
    limit = trainer.limit_train_batches
    return min(n, limit) if isinstance(limit, int) else int(n * limit)


class LogEveryEpoch(L.Callback):
    """Lower `Trainer.log_every_n_steps` to the number of batches of an epoch when an epoch
    is shorter than it (an EM pass over a small dataset is a handful of batches).

    Lightning logs step metrics only every n steps, so such epochs would log none, and it
    warns about it; longer epochs keep the configured interval.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = batches_per_epoch(trainer)
        if n and n < trainer.log_every_n_steps:
            trainer.log_every_n_steps = n
