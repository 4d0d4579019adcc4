"""Reading gmlab checkpoints: which model they hold, with which config, and whether
they fit a given model.

Old checkpoints: every checkpoint records its class's `checkpoint_version`
(`checkpoint["gmlab"]["version"]`, 0 when absent). The models layer registers a converter of
older files (`register_upgrade`; `gmlab.models.compat`), which `load_model` and
`check_compatible` run on the checkpoint dict, so this module imports no model code.

A checkpoint may come from anyone: nothing in it chooses code to run (`gmlab.utils.trust`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch

from gmlab.errors import CheckpointMismatchError, GmlabError
from gmlab.utils.trust import check_model_class, check_stored_config, trusting

# in-place converters of checkpoint dicts written by older versions (register_upgrade)
UPGRADES: list[Callable[[dict], None]] = []


def register_upgrade(convert: Callable[[dict], None]) -> None:
    """Pass every checkpoint that `load_model` and `check_compatible` read through
    `convert(checkpoint)` (in place), after its model class was checked and before its
    stored config is: how the models layer converts the files of older gmlab versions."""
    if convert not in UPGRADES:
        UPGRADES.append(convert)


def upgrade(checkpoint: dict, path: str | Path = "") -> None:
    """Run the registered converters on `checkpoint` in place; a file they cannot convert
    is a `CheckpointMismatchError`."""
    try:
        for convert in UPGRADES:
            convert(checkpoint)
    except GmlabError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointMismatchError(
            f"cannot convert {path}, written by an older gmlab: {type(exc).__name__}: {exc}"
        ) from exc


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict on the CPU, with a clear error for missing/corrupt files.
    `weights_only=True`: tensors and plain containers, no pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise CheckpointMismatchError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("gmlab", {}), dict):
        raise CheckpointMismatchError(f"{path} is not a gmlab checkpoint (not a dict)")
    return checkpoint


def model_class(
    checkpoint: dict, path: str | Path = "", trusted_targets: Sequence[str] = ()
) -> type[L.LightningModule]:
    """The LightningModule class recorded in a gmlab checkpoint: a class of `gmlab.models`
    (or under a `trusted_targets` prefix), checked as a name before its module is imported."""
    name = checkpoint.get("gmlab", {}).get("class")
    if not name:
        raise CheckpointMismatchError(f"{path} was not written by gmlab (no model class recorded)")
    check_model_class(name, path, trusted_targets)
    module, _, qualname = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError) as exc:
        raise CheckpointMismatchError(
            f"{path} holds a {name}, which this gmlab cannot import"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise CheckpointMismatchError(f"{path} records {name}, which is not a model class")
    return cls


def load_model(
    path: str | Path, map_location: str = "cpu", trusted_targets: Sequence[str] = ()
) -> L.LightningModule:
    """Rebuild any gmlab model from its checkpoint (class, hyperparameters and weights),
    also one written by an older gmlab (see the module docstring).

    The file is data: its model class and every `_target_` of its hyperparameters are
    checked against `gmlab.utils.trust` before anything is built; `trusted_targets`
    (module prefixes) allows more, for a file the caller trusts (docs/security.md).

    A Gaussian trained for one step on 16 rows of 4 pixels, saved and read back:

    >>> import tempfile, torch, lightning as L
    >>> from gmlab.models import DiagonalGaussian
    >>> pixels = torch.arange(64, dtype=torch.uint8).reshape(16, 4)
    >>> model, trainer = DiagonalGaussian(data_shape=[4]), L.Trainer(max_steps=1, logger=False,
    ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(model, torch.utils.data.DataLoader([(row,) for row in pixels], 16))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     trainer.save_checkpoint(f"{folder}/last.ckpt")
    ...     loaded = load_model(f"{folder}/last.ckpt")
    >>> type(loaded).__name__, torch.equal(loaded.mean, model.mean)
    ('DiagonalGaussian', True)
    """
    return model_from_checkpoint(read_checkpoint(path), path, map_location, trusted_targets)


def model_from_checkpoint(
    checkpoint: dict,
    path: str | Path = "",
    map_location: str = "cpu",
    trusted_targets: Sequence[str] = (),
) -> L.LightningModule:
    """`load_model` of a checkpoint dict already read by `read_checkpoint` (one read of the
    file for a caller that also needs its other entries); `path` names it in errors."""
    cls = model_class(checkpoint, path, trusted_targets)
    upgrade(checkpoint, path)
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, dict):
        raise CheckpointMismatchError(f"{path}: hyper_parameters is not a dict")
    check_stored_config(hparams, path, "hyper_parameters", trusted_targets)
    with trusting(trusted_targets):  # also for the checkpoints a model loads itself
        try:
            model = cls(**hparams)
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint.get("state_dict", {}), strict=True)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GmlabError):
                raise
            raise CheckpointMismatchError(
                f"cannot rebuild {cls.__name__} from {path}: {exc}"
            ) from exc
    return model.to(map_location)


def check_compatible(model: L.LightningModule, checkpoint: dict, path: str | Path) -> None:
    """Raise `CheckpointMismatchError` listing what differs if `checkpoint` (read from `path`
    by `read_checkpoint`; upgraded in place) cannot resume `model`."""
    cls = model_class(checkpoint, path)
    if cls is not type(model):
        raise CheckpointMismatchError(
            f"{path} holds a {cls.__name__}, but the config builds a {type(model).__name__}; "
            "pass the same model=... (and options) as the run that wrote it."
        )
    upgrade(checkpoint, path)  # older weight names
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
