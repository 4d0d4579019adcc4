"""WarmupStableDecay: its factor against torch's own schedulers, its config errors, and
Trainer runs of the models that take `lr_schedule` (RealNVP, VAE), and resumes from a
checkpoint written without any schedule, whose optimizer steps use exactly
lr * factor(global step)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from support.trainer import quiet_trainer

from gmlab.data import DigitsDataModule
from gmlab.errors import GmlabError
from gmlab.models.realnvp import RealNVP
from gmlab.models.vae import VAE
from gmlab.utils.lr_schedule import WarmupStableDecay

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def torch_lrs(scheduler_factory, steps: int, base_lr: float = 2.0) -> list[float]:
    """The lr torch's scheduler gives at steps 0..steps-1 on a one-parameter SGD."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_matches_torch_linear_lr():
    schedule = WarmupStableDecay(warmup_steps=5)
    reference = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1 / 5, 1.0, total_iters=4), 9
    )
    assert [2.0 * schedule.factor(t) for t in range(9)] == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("min_factor", [0.0, 0.1])
def test_decay_matches_torch_cosine_annealing(min_factor):
    start, length = 7, 10
    schedule = WarmupStableDecay(decay_start=start, decay_steps=length, min_factor=min_factor)
    reference = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, length, 2.0 * min_factor),
        length + 1,
    )
    ours = [2.0 * schedule.factor(start + s) for s in range(length + 1)]
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert [schedule.factor(t) for t in range(start)] == [1.0] * start  # the stable stretch
    assert schedule.factor(start + length + 100) == min_factor  # held after the decay
    assert WarmupStableDecay().factor(10**6) == 1.0  # no decay_start: constant


def test_bad_schedule_options_are_clear_errors():
    with pytest.raises(GmlabError, match=r"unknown option\(s\) \['decay_step'\].*decay_steps"):
        WarmupStableDecay.from_config({"decay_step": 10})
    with pytest.raises(GmlabError, match="min_factor"):
        WarmupStableDecay(min_factor=1.5)
    with pytest.raises(GmlabError, match="decay_start"):
        WarmupStableDecay(decay_start=-1)
    assert WarmupStableDecay.from_config(None) == WarmupStableDecay()


class StepLrs(L.Callback):
    """Records (global step, lr) as each optimizer step is about to happen."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        lrs = {group["lr"] for group in optimizer.param_groups}
        assert len(lrs) == 1
        self.seen.append((trainer.global_step, lrs.pop()))


SCHEDULED_MODELS = {
    "realnvp": lambda schedule: RealNVP(
        [1, 8, 8], num_blocks=1, filters=8, lr=0.01, lr_schedule=schedule
    ),
    "vae": lambda schedule: VAE(
        [1, 8, 8],
        latent_dim=2,
        hidden=[16],
        prior="mog",
        n_components=3,
        lr=0.01,
        lr_schedule=schedule,
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULED_MODELS))
def test_steps_use_the_schedule_and_a_resume_continues_it(name, tmp_path):
    build = SCHEDULED_MODELS[name]
    schedule = {"warmup_steps": 2, "decay_start": 4, "decay_steps": 4, "min_factor": 0.1}
    expected = WarmupStableDecay(**schedule)
    data = DigitsDataModule(batch_size=32, eval_batch_size=300, val_size=150)

    torch.manual_seed(0)
    record = StepLrs()
    quiet_trainer(max_steps=10, limit_val_batches=0, callbacks=[record]).fit(
        build(schedule), datamodule=data
    )
    assert [step for step, _ in record.seen] == list(range(10))
    assert [lr for _, lr in record.seen] == pytest.approx(
        [0.01 * expected.factor(t) for t in range(10)], rel=1e-12
    )

    # A run trained 5 steps at a constant lr, resumed with the schedule: steps 5..9 follow it.
    trainer = quiet_trainer(max_steps=5, limit_val_batches=0)
    trainer.fit(build(None), datamodule=data)
    path = tmp_path / "constant.ckpt"
    trainer.save_checkpoint(path)
    resumed = StepLrs()
    quiet_trainer(max_steps=10, limit_val_batches=0, callbacks=[resumed]).fit(
        build(schedule), datamodule=data, ckpt_path=path
    )
    assert [step for step, _ in resumed.seen] == list(range(5, 10))
    assert [lr for _, lr in resumed.seen] == pytest.approx(
        [0.01 * expected.factor(t) for t in range(5, 10)], rel=1e-12
    )
