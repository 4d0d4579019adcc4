"""Every config the repo ships composes, and its model and DataModule instantiate."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# second stages: they need a stage-1 checkpoint (built in tests/models/test_vqvae.py)
STAGE_TWO = [name for name in EXPERIMENTS if name.startswith("vqvae_pixelcnn_")]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
        cfg.paths.work_dir = "unused"
    return cfg


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - set(STAGE_TWO)))
def test_experiment_composes_and_builds(name):
    cfg = composed([f"experiment={name}"])
    assert cfg.model._target_.startswith("gmlab.")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert sum(p.numel() for p in model.parameters()) > 0
    hydra.utils.instantiate(cfg.data)  # constructing reads no files


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_no_preset_leaves_a_value_to_the_user(name):
    cfg = composed([f"experiment={name}"])
    assert OmegaConf.missing_keys(cfg) == set()
    if name in STAGE_TWO:  # the stage-1 checkpoint is found by the model (vqvae_ckpt=auto)
        assert cfg.model.vqvae_ckpt == "auto"


@pytest.mark.parametrize("name", DATA)
def test_data_config_instantiates(name):
    cfg = composed([f"data={name}", "model=gaussian"])
    dm = hydra.utils.instantiate(cfg.data)
    assert tuple(dm.shape) == tuple(cfg.data.shape)


MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EM_ONLY = {"mfa", "mppca"}  # closed-form updates, no optimizer


@pytest.mark.parametrize("name", sorted(set(MODELS) - EM_ONLY - {"vqvae_pixelcnn"}))
def test_every_gradient_model_takes_the_optimizer_and_scheduler_groups(name):
    """model/optimizer and model/lr_scheduler swap in every such model (vqvae_pixelcnn, whose
    stage-1 checkpoint this test lacks, is checked in tests/models/test_vqvae.py)."""
    data = "data=mnist" if name == "gmm_classifier" else "data=digits"
    overrides = [f"model={name}", data, "model/optimizer=sgd", "model.optimizer.lr=0.05"]
    cfg = composed([*overrides, "model/lr_scheduler=step", "model.lr_scheduler.gamma=0.5"])
    assert "lr" not in cfg.model and "lr_schedule" not in cfg.model
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    built = model.configure_optimizers()
    assert type(built["optimizer"]) is torch.optim.SGD
    assert built["optimizer"].defaults["lr"] == 0.05
    scheduler = built["lr_scheduler"]["scheduler"]
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR and scheduler.gamma == 0.5


def test_vae_record_preset_is_the_wide_mog_preset_trained_with_dreg():
    record = composed(["experiment=vae_mog_mnist_record"])
    wide = composed(["experiment=vae_mog_mnist_wide"])
    assert record.model.objective == "dreg" and record.model.train_k == 5
    assert record.model.prior.learn_weights is True
    rec, base = (OmegaConf.to_container(c.model) for c in (record, wide))
    for model in (rec, base):
        del model["objective"], model["train_k"], model["prior"]["learn_weights"]
    assert rec == base
    assert record.trainer == wide.trainer and record.data == wide.data


@pytest.mark.parametrize("group", ["adam", "adamw"])
def test_adam_presets_are_fused_and_step_like_the_per_tensor_loop(group):
    cfg = composed(["model=vae", "data=digits", f"model/optimizer={group}"])
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    fused = model.configure_optimizers()
    assert fused.defaults["fused"] is True
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    options = {k: v for k, v in fused.defaults.items() if k in ("lr", "betas", "weight_decay")}
    loop = type(fused)(twin, **options, foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin, strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(model.parameters(), twin, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
