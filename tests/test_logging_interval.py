"""`LogEveryEpoch`: epochs shorter than `log_every_n_steps` still log training metrics."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from gmlab.callbacks import LogEveryEpoch


class LinearFit(L.LightningModule):
    """Least squares of a linear map; logs its training loss on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).square().mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Points(L.LightningDataModule):
    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(self.n, 2))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)


def fit(tmp_path, callbacks, n: int, limit=1.0) -> tuple[L.Trainer, list[str], list[dict]]:
    """(trainer, warnings raised, rows of the CSV log) of 3 epochs, log_every_n_steps=50."""
    trainer = L.Trainer(
        max_epochs=3,
        log_every_n_steps=50,
        limit_train_batches=limit,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LinearFit(), datamodule=Points(n, batch_size=4))
    path = Path(trainer.logger.experiment.metrics_file_path)
    lines = path.read_text().splitlines() if path.exists() else []  # no file: nothing logged
    rows = list(csv.DictReader(lines))
    rows = [row for row in rows if row.get("train/loss")]
    return trainer, [str(w.message) for w in caught], rows


def interval_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "smaller than the logging interval" in m]


@pytest.mark.parametrize("n, limit, per_epoch", [(24, 1.0, 6), (24, 5, 5), (40, 0.5, 5)])
def test_short_epochs_log_once_an_epoch(tmp_path, n, limit, per_epoch):
    trainer, messages, rows = fit(tmp_path, [LogEveryEpoch()], n, limit)
    assert trainer.log_every_n_steps == per_epoch
    assert not interval_warnings(messages)
    assert [int(r["step"]) for r in rows] == [per_epoch - 1, 2 * per_epoch - 1, 3 * per_epoch - 1]


def test_without_the_callback_short_epochs_log_nothing(tmp_path):
    trainer, messages, rows = fit(tmp_path, [], n=24)
    assert trainer.log_every_n_steps == 50 and interval_warnings(messages) and rows == []


def test_long_epochs_keep_the_configured_interval(tmp_path):
    trainer, messages, rows = fit(tmp_path, [LogEveryEpoch()], n=4 * 120)
    assert trainer.log_every_n_steps == 50
    assert [int(r["step"]) for r in rows] == list(range(49, 360, 50))
