"""Resuming a run: the config changes a resume may carry, the metrics it keeps, and the
files a fresh start in a used folder sets aside."""

from __future__ import annotations

import os
from pathlib import Path

from gmlab.errors import ConfigError
from gmlab.utils.runs import RunRecord, read_json

# config keys (and the keys under them) that may differ between a run and its resume: how
# long to train, where files are, what is shown or logged, which device
RESUME_SAFE = (
    "ckpt_path",
    "train",
    "test",
    "tags",
    "task_name",
    "optimized_metric",
    "paths",
    "logger",
    "data.root",
    "data.num_workers",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.model_checkpoint.dirpath",
)
_ABSENT = object()


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty one adds no key
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _safe(key: str) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in RESUME_SAFE)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two run configs (or that only one has),
    without the `RESUME_SAFE` ones."""
    a, b = _flat(saved), _flat(current)
    keys = sorted(k for k in a.keys() | b.keys() if not _safe(k))
    return [k for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def check_resume_config(path: str, checkpoint: dict, current: dict) -> None:
    """Raise `ConfigError` naming the differing keys when the run config `current` differs
    from the one recorded in the checkpoint beyond `RESUME_SAFE` (a resume would keep the old
    weights while the run's files claim the new config)."""
    saved = checkpoint.get("gmlab", {}).get("config")
    if not saved:
        return
    keys = config_differences(saved, current)
    if not keys:
        return
    a, b = _flat(saved), _flat(current)

    def shown(flat: dict, key: str) -> str:
        return "(absent)" if key not in flat else repr(flat[key])

    details = "; ".join(f"{k}: {shown(a, k)} -> {shown(b, k)}" for k in keys[:6])
    more = f"; ... ({len(keys)} in all)" if len(keys) > 6 else ""
    raise ConfigError(
        f"cannot resume from {path}: the config differs from the run that wrote it in "
        f"{details}{more}. Resume with that run's options (a resume may change only the "
        "training length trainer.max_epochs / max_steps / max_time, the device, paths, "
        "logging and display: docs/sweeps.md), or start fresh (no ckpt_path) in another folder."
    )


def earlier_fit_metrics(run_dir: Path) -> dict[str, float]:
    """The training and validation metrics a run folder's `metrics.json` holds (written after
    fitting, before testing), kept by a resume that has no training left to do."""
    metrics = read_json(Path(run_dir) / "metrics.json") or {}
    return {k: v for k, v in metrics.items() if not k.startswith("test/")}


def set_aside(record: RunRecord, paths: list[Path]) -> None:
    """Move the files of the folder's earlier attempt (`paths` that exist: checkpoints,
    metrics, TensorBoard events) into `<run>/attempts/<n>/`, n its index in the record's
    `attempts`, and note the folder there, so that a fresh start neither mixes its files
    with them nor leaves a `last.ckpt` for a later `ckpt_path=last` to pick up."""
    attempts = record.data.get("attempts") or []
    present = [p for p in paths if p.exists()]
    if not attempts or not present:
        return
    run_dir = record.path.parent
    target = run_dir / "attempts" / str(len(attempts) - 1)
    target.mkdir(parents=True, exist_ok=True)
    for path in present:
        os.replace(path, target / path.name)
    attempts[-1]["set_aside"] = str(target.relative_to(run_dir))
    record.update(attempts=attempts)
