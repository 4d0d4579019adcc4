"""Compose `conf/train.yaml` for in-process tests (Hydra's compose API, no run directory)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[2] / "conf"


def train_config(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The training config with `overrides`, writing under `tmp_path`, without the
    progress-bar and model-summary callbacks (noise in test logs)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.work_dir = str(tmp_path)
        cfg.callbacks.pop("progress_bar", None)
        cfg.callbacks.pop("model_summary", None)
    return cfg
