"""Every config the repo ships composes, and its model and DataModule instantiate."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
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
