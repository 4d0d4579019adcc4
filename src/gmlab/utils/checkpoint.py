"""Reading gmlab checkpoints: which model they hold, with which config, and whether
they fit a given model.

Old checkpoints: a model class records `checkpoint_version` in every checkpoint
(`checkpoint["gmlab"]["version"]`, 0 when absent) and converts hyperparameters saved at an
older version in its classmethod `migrate_hparams(hparams, version)`; `load_model` applies
it before the model is built, and the model's `on_load_checkpoint` renames old weights.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import lightning as L
import torch

from gmlab.errors import CheckpointMismatchError


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict on the CPU, with a clear error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def model_class(checkpoint: dict, path: str | Path = "") -> type[L.LightningModule]:
    """The LightningModule class recorded in a gmlab checkpoint."""
    name = checkpoint.get("gmlab", {}).get("class")
    if not name:
        raise CheckpointMismatchError(f"{path} was not written by gmlab (no model class recorded)")
    module, _, qualname = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as exc:
        raise CheckpointMismatchError(
            f"{path} holds a {name}, which this gmlab cannot import"
        ) from exc


def migrate_checkpoint(checkpoint: dict, cls: type[L.LightningModule]) -> bool:
    """Bring the checkpoint's hyperparameters to `cls`'s current options in place
    (`cls.migrate_hparams`, from the recorded version); True if anything changed."""
    version = checkpoint.get("gmlab", {}).get("version", 0)
    migrate = getattr(cls, "migrate_hparams", None)
    current = getattr(cls, "checkpoint_version", 0)
    if migrate is None or version >= current or "hyper_parameters" not in checkpoint:
        return False
    checkpoint["hyper_parameters"] = migrate(dict(checkpoint["hyper_parameters"]), version)
    checkpoint["gmlab"] = {**checkpoint.get("gmlab", {}), "version": current}
    return True


def load_model(path: str | Path, map_location: str = "cpu") -> L.LightningModule:
    """Rebuild any gmlab model from its checkpoint (class, hyperparameters and weights),
    also one written by an older gmlab (see the module docstring)."""
    checkpoint = read_checkpoint(path)
    cls = model_class(checkpoint, path)
    source: str | Path | io.BytesIO = path
    if migrate_checkpoint(checkpoint, cls):
        source = io.BytesIO()
        torch.save(checkpoint, source)
        source.seek(0)
    try:
        return cls.load_from_checkpoint(source, map_location=map_location, weights_only=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointMismatchError(f"cannot rebuild {cls.__name__} from {path}: {exc}") from exc


def check_compatible(model: L.LightningModule, path: str | Path) -> None:
    """Raise `CheckpointMismatchError` listing what differs if `path` cannot resume `model`."""
    checkpoint = read_checkpoint(path)
    cls = model_class(checkpoint, path)
    if cls is not type(model):
        raise CheckpointMismatchError(
            f"{path} holds a {cls.__name__}, but the config builds a {type(model).__name__}; "
            "pass the same model=... (and options) as the run that wrote it."
        )
    if "state_dict" in checkpoint:
        model.on_load_checkpoint(checkpoint)  # the model's renames of older checkpoints' keys
    saved = checkpoint.get("state_dict", {})
    current = model.state_dict()
    problems = [f"missing {k}" for k in current if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in current]
    problems += [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs config {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 6 else ""
        )
        raise CheckpointMismatchError(
            f"{path} does not match the configured {type(model).__name__}: {shown}. "
            "Use the same model options as the run that wrote the checkpoint."
        )
