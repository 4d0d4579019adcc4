"""What a run leaves behind besides checkpoints: metrics.json, hyperparameters and its
record `run.json` (status, times, provenance; docs/sweeps.md lists the keys)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[3]
RUN_RECORD = "run.json"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` through a temporary file and `os.replace`, so a reader
    (or a crash) never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
    """A run folder's `run.json`, rewritten atomically on every `update`."""

    def __init__(self, run_dir: Path, data: dict) -> None:
        self.path = Path(run_dir) / RUN_RECORD
        self.data = data

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


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
    beside the metrics' own scalars)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "metrics.json", metrics)
    hparams = flatten(
        {k: v for k, v in cfg_dict.items() if k in ("model", "data", "seed", "trainer")}
    )
    for logger in trainer.loggers:
        if _is_tensorboard(logger) and trainer.is_global_zero:
            log_hparams_session(logger, hparams)
        logger.save()


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


def _is_tensorboard(logger) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)
