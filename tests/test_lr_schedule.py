"""The optimizer + lr-scheduler parts (`GmlabModule.configure_optimizers`): the warm-up /
stable / cosine schedule against torch's own schedulers, its option errors, and Trainer runs
whose optimizer steps follow the configured curve (per step for WarmupStableDecay, per epoch
for StepLR), also across a resume from a mid-run checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from support.trainer import quiet_trainer

from gmlab.data import DigitsDataModule
from gmlab.errors import ConfigError
from gmlab.models.base import build_optimization
from gmlab.models.gaussian import DiagonalGaussian
from gmlab.models.gmm_classifier import GMMClassifier
from gmlab.models.realnvp import RealNVP
from gmlab.utils.lr_schedule import WarmupStableDecay

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WSD = "gmlab.utils.lr_schedule.WarmupStableDecay"


def lrs_of(scheduler_factory, steps: int, base_lr: float = 2.0) -> list[float]:
    """The lr a scheduler gives at steps 0..steps-1 on a one-parameter SGD."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def torch_wsd(base_lr: float, warmup: int, start: int, length: int, m: float, steps: int):
    """The warm-up / stable / cosine curve pieced together from torch's LinearLR and
    CosineAnnealingLR (the reference for WarmupStableDecay)."""
    sched = torch.optim.lr_scheduler
    warm = lrs_of(
        lambda o: sched.LinearLR(o, 1 / warmup, 1.0, total_iters=warmup - 1), warmup, base_lr
    )
    decay = lrs_of(lambda o: sched.CosineAnnealingLR(o, length, base_lr * m), length, base_lr)
    curve = warm + [base_lr] * (start - warmup) + decay
    return (curve + [base_lr * m] * steps)[:steps]


def test_warmup_matches_torch_linear_lr():
    ours = lrs_of(lambda opt: WarmupStableDecay(opt, warmup_steps=5), 9)
    reference = lrs_of(
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1 / 5, 1.0, total_iters=4), 9
    )
    assert ours == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("min_factor", [0.0, 0.1])
def test_decay_matches_torch_cosine_annealing(min_factor):
    start, length = 7, 10
    ours = lrs_of(
        lambda opt: WarmupStableDecay(
            opt, decay_start=start, decay_steps=length, min_factor=min_factor
        ),
        start + length + 5,
    )
    reference = lrs_of(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, length, 2.0 * min_factor),
        length + 1,
    )
    assert ours[:start] == [2.0] * start  # the stable stretch
    assert ours[start : start + length + 1] == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert ours[-1] == pytest.approx(2.0 * min_factor)  # held after the decay
    assert lrs_of(lambda opt: WarmupStableDecay(opt), 50)[-1] == 2.0  # no decay_start


def test_bad_options_are_clear_errors():
    param = [torch.zeros(1, requires_grad=True)]
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.1}
    wsd = {"_target_": WSD, "_partial_": True}
    with pytest.raises(ConfigError, match=r"model.lr_scheduler .*min_factor must lie in \[0, 1\]"):
        build_optimization(param, adam, {**wsd, "min_factor": 1.5})
    with pytest.raises(ConfigError, match=r"model.lr_scheduler .*decay_start"):
        build_optimization(param, adam, {**wsd, "decay_start": -1})
    with pytest.raises(ConfigError, match=r"model.lr_scheduler .*unexpected keyword.*decay_step"):
        build_optimization(param, adam, {**wsd, "decay_step": 10})
    with pytest.raises(ConfigError, match="interval must be step or epoch"):
        build_optimization(param, adam, {**wsd, "interval": "batch"})
    with pytest.raises(ConfigError, match=r"model.optimizer \(torch.optim.Adam\).*lrr"):
        build_optimization(param, {**adam, "lrr": 0.1})
    with pytest.raises(ConfigError, match="model.optimizer is not set"):
        build_optimization(param, None)
    assert isinstance(build_optimization(param, adam, {}), torch.optim.Adam)  # none: no scheduler


class StepLrs(L.Callback):
    """Records (global step, lr) as each optimizer step is about to happen."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        lrs = {group["lr"] for group in optimizer.param_groups}
        assert len(lrs) == 1
        self.seen.append((trainer.global_step, lrs.pop()))


def fit_and_resume(build, data, total: int, split: int, tmp_path, **limits) -> tuple:
    """lr per optimizer step of an uninterrupted run of `total` steps, and of a run stopped
    after `split` steps, saved and resumed to `total` (steps split..total-1)."""
    torch.manual_seed(0)
    whole = StepLrs()
    quiet_trainer(max_steps=total, limit_val_batches=0, callbacks=[whole], **limits).fit(
        build(), datamodule=data
    )
    first = quiet_trainer(max_steps=split, limit_val_batches=0, **limits)
    first.fit(build(), datamodule=data)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    resumed = StepLrs()
    quiet_trainer(max_steps=total, limit_val_batches=0, callbacks=[resumed], **limits).fit(
        build(), datamodule=data, ckpt_path=path
    )
    return whole.seen, resumed.seen


WSD_MODELS = {
    "realnvp": lambda optimizer, scheduler: RealNVP(
        [1, 8, 8],
        flow={"_target_": "gmlab.nn.flows.build_realnvp", "num_blocks": 1, "filters": 8},
        optimizer=optimizer,
        lr_scheduler=scheduler,
    ),
    "gaussian": lambda optimizer, scheduler: DiagonalGaussian(
        [1, 8, 8], optimizer=optimizer, lr_scheduler=scheduler
    ),
}


@pytest.mark.parametrize("name", sorted(WSD_MODELS))
def test_steps_follow_the_wsd_schedule_across_a_mid_run_resume(name, tmp_path):
    options = {"warmup_steps": 2, "decay_start": 4, "decay_steps": 4, "min_factor": 0.1}
    scheduler = {"_target_": WSD, "_partial_": True, "interval": "step", **options}
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}
    data = DigitsDataModule(batch_size=32, eval_batch_size=300, val_size=150)
    whole, resumed = fit_and_resume(
        lambda: WSD_MODELS[name](optimizer, scheduler), data, 10, 5, tmp_path
    )
    reference = torch_wsd(0.01, 2, 4, 4, 0.1, 10)
    assert [step for step, _ in whole] == list(range(10))
    assert [lr for _, lr in whole] == pytest.approx(reference, rel=1e-12)
    assert [step for step, _ in resumed] == list(range(5, 10))  # mid-epoch: 43 steps/epoch
    assert [lr for _, lr in resumed] == pytest.approx(reference[5:], rel=1e-12)


def test_classifier_steps_follow_step_lr_per_epoch_across_a_resume(tmp_path):
    """Adadelta + StepLR(step_size 2, gamma 0.5) per epoch, 3 batches per epoch; the run is
    split in the third epoch (after step 7)."""
    data = DigitsDataModule(batch_size=512, eval_batch_size=300, val_size=150)

    def build():
        return GMMClassifier(
            data_shape=(1, 8, 8),
            num_classes=10,
            features=8,
            trunk={"_target_": "gmlab.nn.MnistCNN", "channels": [2, 4]},
            optimizer={"_target_": "torch.optim.Adadelta", "_partial_": True, "lr": 1.0},
            lr_scheduler={
                "_target_": "torch.optim.lr_scheduler.StepLR",
                "_partial_": True,
                "interval": "epoch",
                "step_size": 2,
                "gamma": 0.5,
            },
        )

    reference_lrs = lrs_of(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, 0.5), 4, 1.0)
    per_step = [reference_lrs[step // 3] for step in range(12)]  # 1350 / 512: 3 batches
    whole, resumed = fit_and_resume(build, data, 12, 7, tmp_path)
    assert [lr for _, lr in whole] == pytest.approx(per_step, rel=1e-12)
    assert [step for step, _ in resumed] == list(range(7, 12))
    assert [lr for _, lr in resumed] == pytest.approx(per_step[7:], rel=1e-12)
