"""The `Checkpoint` callback: `last.ckpt` follows training even when the metric worsens."""

from __future__ import annotations

import lightning as L
import torch

from gmlab.callbacks import Checkpoint


class WorseningModel(L.LightningModule):
    """A linear map whose logged `val/nll` is its epoch number: best at epoch 0, then worse."""

    monitor = "val/nll"

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/nll", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(8, 2))
    return torch.utils.data.DataLoader(data, batch_size=4)


def test_last_checkpoint_is_rewritten_after_the_metric_stops_improving(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=1)
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(WorseningModel(), train_dataloaders=loader(), val_dataloaders=loader())

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3 and last["global_step"] == 8
    best = torch.load(callback.best_model_path, weights_only=False)
    assert best["epoch"] == 0 and callback.best_model_score == 0.0
    assert not list(tmp_path.glob("*.partial"))
