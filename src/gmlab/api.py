"""Python entry points for notebooks and scripts: the `gmlab-train` pipeline without a shell.

result = gmlab.api.fit(["model=vae", "trainer.max_epochs=5"], "runs/vae")
result.metrics["test/bpd"], result.model.sample(16)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gmlab.utils.runs import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "conf"


def train_config(
    overrides: Sequence[str] = (), output_dir: str | Path = "outputs/api"
) -> DictConfig:
    """`conf/train.yaml` composed with `overrides` (the same strings as on the command line),
    writing its checkpoints, logs and images under `output_dir`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    output_dir = str(Path(output_dir).resolve())
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        cfg.paths.work_dir = output_dir
    return cfg


@dataclass
class FitResult:
    """What `fit` gives back: the final metrics, the run folder and the trained model (the
    best checkpoint by the model's monitored metric, else the last one), in eval mode."""

    metrics: dict[str, float]
    run_dir: Path
    model: L.LightningModule


def fit(overrides: Sequence[str] = (), output_dir: str | Path = "outputs/api") -> FitResult:
    """Train and test as `gmlab-train <overrides>` would, in this process."""
    from gmlab.train import train
    from gmlab.utils.checkpoint import load_model

    cfg = train_config(overrides, output_dir)
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    best = sorted(checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    path = best[-1] if best else checkpoints / "last.ckpt"
    return FitResult(metrics, Path(cfg.paths.output_dir), load_model(path).eval())
