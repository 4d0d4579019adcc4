"""A run resumed from a mid-epoch checkpoint trains on the batches an uninterrupted run
would: `IndexBatchLoader.state_dict()` / `load_state_dict()` (Lightning stores the train
loader's state in every checkpoint) make the resumed epoch continue at the batch after the
last one trained, in the same permutation."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from support.trainer import quiet_trainer

from gmlab.callbacks.seeding import EpochSeed
from gmlab.data import DigitsDataModule
from gmlab.data.loader import IndexBatchLoader
from gmlab.models.gaussian import DiagonalGaussian

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def batches(loader: IndexBatchLoader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [x for x, _ in loader]


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_restored_loader_yields_the_rest_of_the_epoch(world_size):
    """Stopped after 3 batches of epoch 1: a new loader given that state yields batches
    3.. of epoch 1 (same permutation, same rank share), then all of epoch 2."""
    x, y = torch.arange(50.0).unsqueeze(1), torch.arange(50)
    kwargs = {"batch_size": 4, "shuffle": True, "seed": 5, "world_size": world_size}
    reference = IndexBatchLoader(x, y, rank=world_size - 1, **kwargs)
    whole, next_epoch = batches(reference, 1), batches(reference, 2)

    first = IndexBatchLoader(x, y, rank=world_size - 1, **kwargs)
    first.sampler.set_epoch(1)
    seen = [x for x, _ in itertools.islice(first, 3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 3}

    resumed = IndexBatchLoader(x, y, rank=world_size - 1, **kwargs)
    resumed.load_state_dict(state)
    rest = batches(resumed, 1)
    assert len(rest) == len(whole) - 3
    for got, want in zip(seen + rest, whole, strict=True):
        assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(batches(resumed, 2), next_epoch, strict=True))


def test_a_state_of_another_epoch_starts_the_epoch_at_its_first_batch():
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20)
    loader = IndexBatchLoader(x, y, batch_size=4, shuffle=True)
    whole = batches(loader, 3)
    loader.load_state_dict({"epoch": 2, "batches": 4})  # saved at the end of epoch 2
    assert all(torch.equal(a, b) for a, b in zip(batches(loader, 3), whole, strict=True))


class Killed(Exception):
    """Stands for the end of a process that saved its state (a signal, a time limit)."""


class SaveAndStopAt(L.Callback):
    """Save the trainer's state after optimizer step `step` (as gmlab's SaveOnSignal does at
    a signal's safe point), then end the run."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Killed(f"stopped after step {self.step}")


def fit(callbacks=(), ckpt_path=None) -> torch.Tensor:
    """Two epochs of a diagonal Gaussian on dequantized digits (22 steps an epoch), seeded
    as gmlab-train seeds (`EpochSeed`: its checkpointed generator states continue the
    dequantization noise of a mid-epoch resume); the final parameters, flattened."""
    L.seed_everything(3, verbose=False)
    model = DiagonalGaussian([1, 8, 8])
    data = DigitsDataModule(batch_size=64, eval_batch_size=512, val_size=150)
    trainer = quiet_trainer(
        max_epochs=2, limit_val_batches=0, deterministic=True, callbacks=[EpochSeed(3), *callbacks]
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    assert trainer.global_step == 44
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("step", [5, 22, 30])  # mid-epoch 0, end of epoch 0, mid-epoch 1
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_parameters(step, tmp_path):
    whole = fit()
    path = tmp_path / "stopped.ckpt"
    with pytest.raises(Killed):
        fit([SaveAndStopAt(step, path)])
    assert torch.load(path, weights_only=False)["global_step"] == step
    resumed = fit(ckpt_path=path)
    assert torch.equal(resumed, whole)  # bitwise
