"""What a run leaves behind besides checkpoints: metrics.json, hyperparameters and its
record `run.json` (status, times, provenance; docs/sweeps.md lists the keys)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import lightning as L
from omegaconf import DictConfig, OmegaConf

from gmlab.errors import GmlabError
from gmlab.utils.trackers import WandbRunLogger

PROJECT_ROOT = Path(__file__).resolve().parents[3]
RUN_RECORD = "run.json"
RESERVE_BYTES = 64 * 1024  # room kept for the final run.json when a disk fills up


class DiskFullError(GmlabError, OSError):
    """The disk (or quota) of a run folder is full."""


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through `<path>.partial` beside it (same file system: never $TMPDIR),
    fsync, then `os.replace`: a reader or a crash sees the old file or the new one, never a
    half-written one. The partial file is removed on any failure; a full disk becomes
    `DiskFullError` naming the file."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left on device while writing {path}") from exc
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` atomically (`write_atomic`)."""
    text = json.dumps(data, indent=2, sort_keys=True).encode()
    write_atomic(path, lambda handle: handle.write(text))


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(run_dir: Path) -> dict | None:
    """The `run.json` of a run folder, or None."""
    return read_json(Path(run_dir) / RUN_RECORD)


class RunRecord:
    """A run folder's `run.json`, rewritten atomically on every `update`.

    `keep_room` writes `run.json.reserve` (`RESERVE_BYTES`) at the start of a run; `finish`,
    the final update, gives the reserve up when the disk is full and writes into its room,
    so that a run that fills the disk still records how it ended."""

    def __init__(self, run_dir: Path, data: dict) -> None:
        self.path = Path(run_dir) / RUN_RECORD
        self.reserve = self.path.with_name(f"{RUN_RECORD}.reserve")
        self.data = data

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)

    def keep_room(self) -> None:
        write_atomic(self.reserve, lambda handle: handle.write(bytes(RESERVE_BYTES)))

    def finish(self, **fields) -> None:
        """The last update of a run (its end status); removes the reserve."""
        try:
            self.update(**fields)
        except DiskFullError:
            if not self.reserve.is_file():
                raise
            self.reserve.unlink()
            self.update()
        self.reserve.unlink(missing_ok=True)


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
    """Write metrics.json and the run's hyperparameters (an HParams session in TensorBoard,
    beside the metrics' own scalars; MLflow params, W&B config), then end a W&B run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "metrics.json", metrics)
    hparams = flatten(
        {k: v for k, v in cfg_dict.items() if k in ("model", "data", "seed", "trainer")}
    )
    for logger in trainer.loggers:
        if _is_tensorboard(logger) and trainer.is_global_zero:
            log_hparams_session(logger, hparams)
        elif _is_tracker(logger):
            logger.log_hyperparams(hparams)  # rank zero only
        logger.save()
        if isinstance(logger, WandbRunLogger):
            logger.end_run()


def log_hparams_session(logger, hparams: dict[str, object]) -> None:
    """Write a run's HParams session (hyperparameters, status success) without an
    experiment summary. TensorBoard then builds the HParams table of a folder of runs (a
    sweep) from all of their sessions: every job's hyperparameters are columns and the last
    value of each scalar is a metric. With one experiment summary per run it would show the
    columns and metrics of one arbitrary run only."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    logger.log_hyperparams(hparams)  # hparams.yaml (no summary: default_hp_metric is off)
    _, start, end = hparams_summary(hparams, {})
    writer = logger.experiment._get_file_writer()
    writer.add_summary(start)
    writer.add_summary(end)


def _is_tracker(logger) -> bool:
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    return isinstance(logger, (MLFlowLogger, WandbLogger))


def _is_tensorboard(logger) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)
