"""Compose `conf/train.yaml` for in-process tests (Hydra's compose API, no run directory)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from gmlab.api import CONFIG_DIR as CONF
from gmlab.api import train_config as compose_train

__all__ = ["CONF", "POINTS", "train_config"]

# a quick in-process run: a Gaussian on 2-D points, 3 epochs, no progress bar
POINTS = [
    "model=gaussian",
    "data._target_=support.callbacks.PointsDataModule",
    "~data.test_size",
    "data.shape=[2]",
    "data.num_levels=null",
    "data.batch_size=64",
    "data.val_size=64",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
]


def train_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The training config with `overrides`, writing under `tmp_path`, without the
    progress-bar and model-summary callbacks (noise in test logs)."""
    cfg = compose_train(overrides, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
        cfg.callbacks.pop("model_summary", None)
    return cfg
