"""Checks of the options every run shares, made before anything is built: a bad value is
one `ConfigError` that names each bad option and the values it accepts, never a traceback
from deep inside a datamodule or Lightning."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gmlab.errors import ConfigError
from gmlab.utils.cli import require_values

# a run whose bits/dim exceeds this diverged: uniform noise on 8-bit pixels gives 8, and no
# model of real data (8-bit, 16-bit, binarized or continuous points) comes near 1000
ABSURD_BPD = 1e3
_UNSET = object()
log = logging.getLogger(__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value) -> bool:
    return _is_int(value) and value >= 1


def _no_limit(value) -> bool:
    return value is None or value == -1


# (option, test, accepted values); an option absent from the config is not checked
RULES: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("seed", lambda v: v is None or _is_int(v), "an integer (or null: unseeded)"),
    ("data.batch_size", _positive, "a positive integer"),
    ("data.eval_batch_size", lambda v: v is None or _positive(v), "a positive integer or null"),
    ("data.limit", lambda v: v is None or _positive(v), "a positive integer or null (all)"),
    ("model.n_components", _positive, "a positive integer"),
    ("model.n_factors", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: a diagonal GMM)"),
)
# the rules of a run that trains (`train: true`)
TRAIN_RULES: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    (
        "trainer.max_epochs",
        lambda v: _positive(v) or _no_limit(v),
        "a positive integer, or -1 (no limit) with trainer.max_steps or trainer.max_time",
    ),
    ("trainer.max_steps", lambda v: _positive(v) or v == -1, "a positive integer or -1 (none)"),
    (
        "trainer.check_val_every_n_epoch",
        lambda v: v is None or _positive(v),
        "a positive integer or null",
    ),
    ("trainer.log_every_n_steps", _positive, "a positive integer"),
)


def bad_options(cfg: DictConfig) -> list[str]:
    """One line `<option> must be <accepted values>, got <value>` per bad option of `cfg`."""
    rules = RULES + (TRAIN_RULES if cfg.get("train") else ())
    lines = []
    for name, ok, accepted in rules:
        value = OmegaConf.select(cfg, name, default=_UNSET)
        if value is not _UNSET and not ok(value):
            lines.append(f"{name} must be {accepted}, got {value!r}")
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs", 1)
    endless = _no_limit(epochs) and trainer.get("max_steps", -1) == -1
    bounded = trainer.get("max_time") is not None or trainer.get("fast_dev_run")
    if cfg.get("train") and endless and not bounded:
        lines.append(
            f"trainer.max_epochs={'null' if epochs is None else epochs} (no limit) needs "
            "trainer.max_steps or trainer.max_time (e.g. 00:04:00:00): the run would never stop"
        )
    return lines


def check_options(cfg: DictConfig) -> None:
    """Raise one `ConfigError` for missing (`???`) options or bad values of the options in
    `RULES` (and `TRAIN_RULES` for a run that trains), one line per option."""
    require_values(cfg)
    lines = bad_options(cfg)
    if lines:
        raise ConfigError("\n".join(lines))


def check_output_dir(path: str | Path, option: str) -> None:
    """ConfigError unless a run can write into the folder `path` (the value of `option`):
    its nearest existing ancestor must be a folder this process may write into (a folder
    under a file cannot be made, not even by root)."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not existing.is_dir():
        raise ConfigError(
            f"{option}={path} cannot be created: {existing} is a file. Give a folder path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option}={path} is not writable: {existing} is read-only or not yours. Give a "
            "folder you may write into."
        )


def warn_divergence(metrics: Mapping[str, float]) -> list[str]:
    """Log a warning for each bits/dim metric (`*bpd*`) above `ABSURD_BPD` (the run
    diverged) and return them, for the run record's `warnings`."""
    found = [
        f"{name} = {value:.3g} bits/dim: training diverged (above {ABSURD_BPD:g} bits/dim; "
        "uniform noise on 8-bit pixels gives 8). Lower the learning rate "
        "(model.optimizer.lr) or clip the gradients (trainer.gradient_clip_val)."
        for name, value in sorted(metrics.items())
        if "bpd" in name and math.isfinite(value) and value > ABSURD_BPD
    ]
    for message in found:
        log.warning(message)
    return found
