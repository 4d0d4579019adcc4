"""Compose `conf/train.yaml` for in-process tests (Hydra's compose API, no run directory)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from gmlab.api import CONFIG_DIR as CONF
from gmlab.api import train_config as compose_train

__all__ = ["CONF", "train_config"]


def train_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The training config with `overrides`, writing under `tmp_path`, without the
    progress-bar and model-summary callbacks (noise in test logs)."""
    cfg = compose_train(overrides, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
        cfg.callbacks.pop("model_summary", None)
    return cfg
