"""Build callbacks and loggers from their Hydra config groups."""

from __future__ import annotations

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

# Trainer flags that refuse a callback of the kind they switch off
SWITCHED_OFF_BY = {
    "enable_progress_bar": ProgressBar,
    "enable_model_summary": ModelSummary,
    "enable_checkpointing": ModelCheckpoint,
}


def _instantiate_group(group: DictConfig | None) -> list:
    if not group:
        return []
    return [hydra.utils.instantiate(conf) for conf in group.values() if conf and "_target_" in conf]


def instantiate_callbacks(
    group: DictConfig | None, trainer: DictConfig | None = None
) -> list[Callback]:
    """One callback per entry of `cfg.callbacks` that has a `_target_`, leaving out those a
    flag of the `trainer` config switches off (`trainer.enable_progress_bar=false` drops the
    progress bar, likewise the model summary and checkpointing): Lightning would otherwise
    refuse the combination."""
    callbacks = _instantiate_group(group)
    flags = trainer or {}
    off = tuple(kind for flag, kind in SWITCHED_OFF_BY.items() if flags.get(flag) is False)
    return [c for c in callbacks if not isinstance(c, off)]


def instantiate_loggers(group: DictConfig | None) -> list[Logger]:
    """One logger per entry of `cfg.logger` that has a `_target_`."""
    return _instantiate_group(group)
