"""Finding run folders and reading what each one recorded.

A run folder holds any of `.hydra/config.yaml`, `run.json` or `metrics.json`. Its status
comes from `run.json` (`finished` / `failed` / `running` / `skipped`, or any other word,
shown as it is); a folder without one is `finished` when it has `metrics.json`, else
`running`. A `finished` record without `metrics.json` is `no metrics`. A `running` run whose
newest file (or heartbeat) is older than the stale threshold was killed: `stale`. A file
that cannot be parsed makes the run `unreadable`, with the reason.

The files are only parsed, never executed: YAML with `yaml.safe_load` (no Python tags; no
aliases, which could expand a small file into an exponential tree), JSON with `json.loads`,
each at most `MAX_FILE_BYTES`; `_target_` keys and `${...}` interpolations stay plain strings.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from gmlab.errors import GmlabError

RUN_MARKERS = (".hydra/config.yaml", "run.json", "metrics.json")
MAX_FILE_BYTES = 8 * 2**20  # run files are kilobytes; a bigger one is not a run record
KNOWN_STATUSES = ("finished", "failed", "running", "skipped", "interrupted")
SKIP_DIRS = {"checkpoints", "tensorboard", "csv", "images", ".hydra", "report", "__pycache__"}


@dataclass
class Run:
    """One run folder: its config (nested dict), overrides, metrics and record."""

    path: Path
    config: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)  # Hydra group choices: model, data, ...
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # run.json
    status: str = "running"
    problem: str = ""  # why unreadable / the error of a failed run
    hydra_cwd: str | None = None

    @property
    def task(self) -> str:
        for task in (self.record.get("task"), self.config.get("task_name")):
            if isinstance(task, str) and task:
                return task
        return "train"

    @property
    def metric_kinds(self) -> dict:
        kinds = self.record.get("metric_kinds")
        return kinds if isinstance(kinds, dict) else {}

    @property
    def wall_time_s(self) -> float | None:
        wall = self.record.get("wall_time_s")
        if isinstance(wall, (int, float)) and math.isfinite(wall):
            return float(wall)
        start, end = self.path / ".hydra" / "config.yaml", self.path / "metrics.json"
        if self.status == "finished" and start.is_file() and end.is_file():
            return max(end.stat().st_mtime - start.stat().st_mtime, 0.0)
        return None

    @property
    def ckpt_path(self) -> Path | None:
        """The checkpoint a run started from (resume) or evaluated (eval runs), absolute."""
        raw = self.record.get("ckpt_path") or self.config.get("ckpt_path")
        if not isinstance(raw, str) or not raw or raw == "last":
            return None
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(self.hydra_cwd or self.path) / path
        return Path(os.path.normpath(path))


def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every run folder at or below `paths` (a run, a multirun, `outputs/`), sorted."""
    found: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise GmlabError(f"{root}: no such file or directory")
        if root.is_file():
            root = root.parent
        for here, dirs, _ in os.walk(root):
            here_path = Path(here)
            if is_run_dir(here_path):
                found.add(here_path.resolve())
                dirs[:] = []
            else:
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise GmlabError(
            f"no runs found below {names} (a run folder has .hydra/config.yaml, run.json "
            "or metrics.json)"
        )
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    """Multirun job folders 0, 1, ..., 10 in numeric order, before names such as 0-d31338c3."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def read_run(path: Path, stale_after_s: float, now: float | None = None) -> Run:
    """Read one run folder; never raises on bad files (the run becomes `unreadable`)."""
    run = Run(path=path)
    problems = []
    for name, reader in (
        (".hydra/config.yaml", _read_config),
        (".hydra/overrides.yaml", _read_overrides),
        (".hydra/hydra.yaml", _read_hydra),
        ("run.json", _read_record),
        ("metrics.json", _read_metrics),
    ):
        file = path / name
        if not file.is_file():
            continue
        try:
            reader(run, file)
        except (
            OSError,
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
            yaml.YAMLError,
        ) as exc:
            problems.append(f"{name}: {_short(exc)}")
    if problems:
        run.status, run.problem = "unreadable", "; ".join(problems)
        return run
    run.status = _status(run, stale_after_s, time.time() if now is None else now)
    return run


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without aliases (`*name`): Hydra never writes them, and nested
    aliases make a small file stand for an exponentially large tree."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise ValueError("YAML aliases (*name) are not accepted in run files")
        return super().compose_node(parent, index)


def _read_text(file: Path) -> str:
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size} bytes, more than the {MAX_FILE_BYTES} a run file may have")
    return file.read_text()


def _read_yaml(file: Path):
    return yaml.load(_read_text(file), Loader=_NoAliasLoader)


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a mapping")
    return value


def _read_config(run: Run, file: Path) -> None:
    config = _mapping(_read_yaml(file), "the file")
    # plain JSON values with string keys (dates, numeric keys), so grouping can sort them
    run.config = json.loads(json.dumps(config, default=str))


def _read_overrides(run: Run, file: Path) -> None:
    overrides = _read_yaml(file) or []
    if not isinstance(overrides, list):
        raise ValueError("not a list")
    run.overrides = [str(o) for o in overrides]


def _read_hydra(run: Run, file: Path) -> None:
    hydra = _mapping(_mapping(_read_yaml(file) or {}, "the file").get("hydra") or {}, "hydra")
    runtime = _mapping(hydra.get("runtime") or {}, "hydra.runtime")
    choices = _mapping(runtime.get("choices") or {}, "hydra.runtime.choices")
    run.choices = {str(k): str(v) for k, v in choices.items() if v is not None}
    cwd = runtime.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("hydra.runtime.cwd is not a string")
    run.hydra_cwd = cwd


def _read_record(run: Run, file: Path) -> None:
    record = _mapping(json.loads(_read_text(file)), "the file")
    status = record.get("status")
    if status is not None and not (isinstance(status, str) and status.strip()):
        raise ValueError(f"status is not a word: {str(status)[:40]!r}")
    run.record = record
    if isinstance(record.get("overrides"), list):
        run.overrides = [str(o) for o in record["overrides"]]


def _read_metrics(run: Run, file: Path) -> None:
    metrics = _mapping(json.loads(_read_text(file)), "the file")
    run.metrics = {str(k): float(v) for k, v in metrics.items()}


def _status(run: Run, stale_after_s: float, now: float) -> str:
    status = run.record.get("status")
    if status in ("failed", "skipped"):
        error = run.record.get("error") or {}
        if isinstance(error, dict) and error:
            message = " ".join(str(error.get("message", "")).split())[:300]
            run.problem = f"{error.get('type', 'error')}: {message}"
    has_metrics = (run.path / "metrics.json").is_file()
    if status == "finished" and not has_metrics:
        run.problem = "run.json says finished, but the folder has no metrics.json"
        return "no metrics"
    if status in ("finished", "failed", "skipped"):
        return status
    if status == "interrupted":  # by a signal, with last.ckpt saved (gmlab.utils.signals)
        by = " ".join(str(run.record.get("signal") or "a signal").split())[:20]
        run.problem = f"interrupted by {by}; the same command resumes it"
        return status
    if status is not None and status not in KNOWN_STATUSES:
        run.problem = "a status gmlab-report does not know, shown as it is"
        return " ".join(status.split())[:40]
    if status is None and has_metrics:
        return "finished"
    last = max(_newest_mtime(run.path), _iso_seconds(run.record.get("heartbeat")) or 0.0)
    if now - last > stale_after_s:
        run.problem = f"no file written for {(now - last) / 60:.0f} min (killed?)"
        return "stale"
    return "running"


def _newest_mtime(folder: Path) -> float:
    newest = 0.0
    for here, _, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(here, name)).st_mtime)
            except OSError:
                continue
    return newest


def _iso_seconds(text) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
