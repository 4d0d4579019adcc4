"""The `Checkpoint` callback: `last.ckpt` follows training even when the metric worsens,
and holds the final weights when training stops between validations."""

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


def loader(n: int = 8) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(n, 2))
    return torch.utils.data.DataLoader(data, batch_size=4)


def trainer_with(callback: Checkpoint, **kwargs) -> L.Trainer:
    return L.Trainer(
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def test_last_checkpoint_is_rewritten_after_the_metric_stops_improving(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=1)
    trainer = trainer_with(callback, max_epochs=4)
    trainer.fit(WorseningModel(), train_dataloaders=loader(), val_dataloaders=loader())

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3 and last["global_step"] == 8
    best = torch.load(callback.best_model_path, weights_only=False)
    assert best["epoch"] == 0 and callback.best_model_score == 0.0
    assert not list(tmp_path.glob("*.partial"))


def test_last_checkpoint_holds_the_final_step_when_max_steps_stops_mid_epoch(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=1)
    model = WorseningModel()
    trainer = trainer_with(callback, max_steps=7, check_val_every_n_epoch=2)
    # 4 batches per epoch, validation after epoch 1 (step 8): never reached, so the only
    # save is the one at the end of training.
    trainer.fit(model, train_dataloaders=loader(16), val_dataloaders=loader())

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == trainer.global_step == 7
    for name, value in model.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name

    # Later stop: validation at step 8 saved best + last; steps 9..10 are saved at the end.
    callback = Checkpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=1)
    model = WorseningModel()
    trainer = trainer_with(callback, max_steps=10, check_val_every_n_epoch=2)
    trainer.fit(model, train_dataloaders=loader(16), val_dataloaders=loader())
    last = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10
    assert torch.load(callback.best_model_path, weights_only=False)["global_step"] == 8
    assert not list(tmp_path.rglob("*.partial"))
