"""What a run leaves behind besides checkpoints: metrics.json and hyperparameters."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def plain_config(cfg: DictConfig) -> dict:
    """The resolved run config as plain Python types (no `hydra` node)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    container.pop("hydra", None)
    return container


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (TensorBoard hparams need scalars)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def finish_run(
    trainer: L.Trainer, cfg_dict: dict, metrics: dict[str, float], out_dir: Path
) -> None:
    """Write metrics.json and log the hyperparameters together with the final metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    hparams = flatten(
        {k: v for k, v in cfg_dict.items() if k in ("model", "data", "seed", "trainer")}
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams, metrics=metrics) if _takes_metrics(logger) else None
        logger.save()


def _takes_metrics(logger) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)
