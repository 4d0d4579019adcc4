"""MFAModel: EM under Lightning (gmlab-train), checkpoints and resume, fine-tuning, DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.compose import train_config
from support.trainer import quiet_trainer

from gmlab.estimators.mfa import _TensorDataModule
from gmlab.models.mfa import MFAModel
from gmlab.train import build, train
from gmlab.utils.checkpoint import load_model

FAST = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_cfg(tmp_path: Path, overrides: list[str]):
    return train_config(tmp_path, [*FAST, *overrides])


def test_default_train_is_mfa_on_digits_and_checkpoints_every_pass(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=mfa_digits", "trainer.max_epochs=3"])
    assert cfg.model._target_ == "gmlab.models.mfa.MFAModel"
    metrics = train(cfg)
    assert metrics["val/bpd"] < 6.5 and metrics["test/bpd"] < 6.6  # diagonal Gaussian: ~7.3
    assert metrics["train/reseeded"] == 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2  # written after every EM pass although EM takes no step
    assert last["global_step"] == 3  # one (empty) optimizer step per E-step batch
    assert last["gmlab"]["class"] == "gmlab.models.mfa.MFAModel"
    for name in ("samples", "samples_noise_free", "components", "inpainting", "lowest_likelihood"):
        assert (tmp_path / "images" / name / "epoch_002.png").is_file(), name
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert bool(model.initialized) and isinstance(model, MFAModel)


def test_resume_continues_with_the_next_pass(tmp_path):
    base = ["experiment=mfa_digits", "trainer.deterministic=true", "test=false"]
    straight = make_cfg(tmp_path / "a", [*base, "trainer.max_epochs=4"])
    train(straight)
    first = make_cfg(tmp_path / "b", [*base, "trainer.max_epochs=2"])
    train(first)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    resumed = make_cfg(tmp_path / "b", [*base, "trainer.max_epochs=4", f"ckpt_path={last}"])
    train(resumed)
    a = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = load_model(last)
    assert torch.load(last, weights_only=True)["epoch"] == 3
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_adam_finetuning_after_em(tmp_path):
    cfg = make_cfg(
        tmp_path,
        [
            "experiment=mfa_digits",
            "trainer.max_epochs=3",
            "model.em_passes=2",
            "model.finetune_lr=1e-3",
            "data.batch_size=256",
            "test=false",
        ],
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step > 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    floor = torch.log(torch.tensor(model.hparams.noise_floor))
    assert (model.mixture.log_noise >= floor - 1e-6).all()
    assert torch.isfinite(trainer.callback_metrics["train/ll"])


def test_inpainting_samples_and_feature_sampling_through_the_module(tmp_path):
    cfg = make_cfg(
        tmp_path,
        [
            "experiment=mfa_digits",
            "trainer.max_epochs=2",
            "test=false",
            "model.feature_sampling=0.5",
            "model.init=rnd_samples",
        ],
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    x = datamodule.tensors("test")[0][:8]
    rec = model.reconstruct(x)
    assert rec.shape == x.shape
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    torch.testing.assert_close(rec[..., left], x[..., left].float(), atol=0.5, rtol=0)
    s = model.sample(5)
    assert s.shape == (5, 1, 8, 8) and s.min() >= 0 and s.max() <= 255
    assert "train/ll" not in trainer.callback_metrics  # only a subset's likelihood
    assert torch.isfinite(trainer.callback_metrics["val/bpd"])
    figs = model.figures(x)
    assert figs["components"].shape[0] == 3
    assert set(figs) >= {"samples", "components", "inpainting"}


def fit_points(strategy: str, devices: int):
    """A few EM passes on float points; returns the fitted parameters."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 2, generator=g)
    x = z @ torch.randn(2, 6, generator=g) + torch.randn(400, 6, generator=g) * 0.3
    x[200:] += 4.0
    dm = _TensorDataModule(x, batch_size=50)  # 8 batches: 4 per rank under 2 processes
    model = MFAModel([6], n_components=3, n_factors=2, init="kmeans", noise_floor=1e-4)
    trainer = quiet_trainer(
        devices=devices,
        strategy=strategy,
        max_epochs=3,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    return {k: v.detach().clone() for k, v in model.mixture.state_dict().items()}


def test_two_process_ddp_gives_the_single_process_parameters():
    single = fit_points("auto", 1)
    ddp = fit_points("ddp_spawn", 2)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)
