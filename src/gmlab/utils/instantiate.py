"""Build callbacks and loggers from their Hydra config groups."""

from __future__ import annotations

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig


def _instantiate_group(group: DictConfig | None) -> list:
    if not group:
        return []
    return [hydra.utils.instantiate(conf) for conf in group.values() if conf and "_target_" in conf]


def instantiate_callbacks(group: DictConfig | None) -> list[Callback]:
    """One callback per entry of `cfg.callbacks` that has a `_target_`."""
    return _instantiate_group(group)


def instantiate_loggers(group: DictConfig | None) -> list[Logger]:
    """One logger per entry of `cfg.logger` that has a `_target_`."""
    return _instantiate_group(group)
