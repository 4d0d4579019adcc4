"""Runs that leave a record, and multiruns that keep going.

`run_recorded` wraps a task (`gmlab-train`, `gmlab-eval`): it writes the run folder's
`run.json` (status running -> finished / failed) and, in a multirun, turns any failure of
one job into a record + `None` for the sweeper so that the other jobs run. A relaunch into
the same `hydra.sweep.dir` skips the jobs that finished and resumes the others from their own
`checkpoints/last.ckpt`: jobs are matched by `job_key` (their overrides), and the
`gmlab.job_subdir` resolver (conf/hydra/default.yaml) puts a job back into the folder of its
earlier launch. `SweepSummary` (a Hydra callback) prints what the multirun did and makes its
exit status non-zero when a job failed or did not finish.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gmlab.utils.cli import find_user_error
from gmlab.utils.metric_kinds import metric_kind
from gmlab.utils.provenance import device_info, git_info, iso_seconds, now_iso, versions
from gmlab.utils.runs import PROJECT_ROOT, RUN_RECORD, RunRecord, read_json, read_record

log = logging.getLogger(__name__)
SCHEMA = 1
ATTEMPT_KEYS = ("status", "start_time", "end_time", "wall_time_s", "ckpt_path", "heartbeat")


def job_key(overrides: list[str], task: str = "train") -> str:
    """sha1 of a job's sorted task overrides without `hydra.*` / `hydra/...` and, for
    training, without `ckpt_path` (a resumed job is the same job; an evaluation of another
    checkpoint is not)."""

    def ignored(override: str) -> bool:
        name = override.lstrip("+~").split("=", 1)[0]
        if name == "hydra" or name.startswith(("hydra.", "hydra/")):
            return True
        return name == "ckpt_path" and task != "eval"

    kept = sorted(o for o in overrides if not ignored(o))
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()


def folder_key(folder: Path, task: str) -> str | None:
    """The job key of an earlier job folder: its run.json's, else one computed from Hydra's
    `.hydra/overrides.yaml` (a job killed before its record was written)."""
    record = read_record(folder)
    if record and record.get("job_key"):
        return record["job_key"]
    try:
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return job_key([str(o) for o in overrides], task) if isinstance(overrides, list) else None


def job_subdir(sweep_dir: Path, job_num: int, overrides: list[str], task: str) -> str:
    """The folder (relative to the sweep dir) of multirun job `job_num`: the folder of an
    earlier launch of the same overrides (a finished one first), else `<job_num>`, else
    `<job_num>-<key[:8]>` when `<job_num>` holds another job."""
    key = job_key(overrides, task)
    own = str(job_num)
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else []
    matches = [p for p in folders if folder_key(p, task) == key]
    if matches:
        finished = [p for p in matches if (read_record(p) or {}).get("status") == "finished"]
        return (finished or matches)[0].name
    if folder_key(sweep_dir / own, task) is None:
        return own
    return f"{own}-{key[:8]}"


def _job_subdir_resolver(*, _root_: DictConfig) -> str:
    hydra_cfg = _root_.hydra
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    task = str(_root_.get("task_name", "train"))
    return job_subdir(Path(hydra_cfg.sweep.dir), int(hydra_cfg.job.num), overrides, task)


OmegaConf.register_new_resolver("gmlab.job_subdir", _job_subdir_resolver, replace=True)


def _rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return 0


def _job() -> dict | None:
    """This Hydra job's output dir, overrides and multirun position; None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "out_dir": Path(hc.runtime.output_dir),
        "overrides": [str(o) for o in hc.overrides.task],
        "multirun": multirun,
        "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None,
        "job_num": int(hc.job.num) if multirun else None,
    }


def _attempt(record: dict) -> dict:
    return {k: record.get(k) for k in ATTEMPT_KEYS}


def _new_record(cfg: DictConfig, task: str, job: dict, key: str, earlier: dict | None) -> dict:
    trainer = cfg.get("trainer") or {}
    attempts = [*earlier.get("attempts", []), _attempt(earlier)] if earlier else []
    return {
        "schema": SCHEMA,
        "task": task,
        "status": "running",
        "start_time": now_iso(),
        "end_time": None,
        "wall_time_s": None,
        "heartbeat": None,
        "overrides": job["overrides"],
        "job_key": key,
        "sweep_dir": job["sweep_dir"],
        "job_num": job["job_num"],
        "git": git_info(PROJECT_ROOT),
        "versions": versions(),
        "device": device_info(str(trainer.get("accelerator", "cpu"))),
        "ckpt_path": None,
        "metric_kinds": {},
        "attempts": attempts,
    }


def _error(exc: BaseException) -> dict:
    user = find_user_error(exc)
    shown = user if user is not None else exc
    return {
        "type": type(shown).__name__,
        "message": str(shown),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _release_memory() -> None:
    """Free what a failed job left behind before the next job of the process starts."""
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


Work = Callable[[DictConfig, "RunRecord | None"], dict]


def run_recorded(cfg: DictConfig, task: str, work: Work) -> dict | None:
    """Run `work(cfg, record)` -> metrics with a `run.json` in the Hydra job's folder.

    Single run: failures are recorded, then raised as before. Multirun: a failure (any
    `Exception`) is recorded and logged and returns None (Optuna marks the trial failed);
    a job whose folder holds a finished record of the same job is skipped (its metrics are
    returned); an unfinished one resumes with `ckpt_path=last` unless a `ckpt_path` was given.
    Outside Hydra `work(cfg, None)` runs unrecorded; so it does on the ranks > 0 of a
    distributed run, after the same skip / resume decision as rank 0.
    """
    job = _job()
    if job is None:
        return work(cfg, None)
    writes = _rank() == 0
    out_dir = job["out_dir"]
    key = job_key(job["overrides"], task)
    earlier = read_record(out_dir)
    earlier = earlier if earlier and earlier.get("job_key") == key else None
    if job["multirun"] and earlier:
        metrics = read_json(out_dir / "metrics.json")
        if earlier.get("status") == "finished" and metrics is not None:
            if writes:
                skip = {"status": "skipped", "start_time": now_iso(), "end_time": now_iso()}
                attempts = [*earlier.get("attempts", []), skip]
                RunRecord(out_dir, earlier).update(attempts=attempts)
                log.info("skipped: finished in an earlier launch (%s)", out_dir)
            return metrics
        if task == "train" and cfg.get("ckpt_path") is None:
            cfg.ckpt_path = "last"
    if not writes:
        return work(cfg, None)
    record = RunRecord(out_dir, _new_record(cfg, task, job, key, earlier))
    record.update()
    started = time.time()
    try:
        metrics = work(cfg, record)
    except Exception as exc:
        record.update(
            status="failed",
            end_time=now_iso(),
            wall_time_s=time.time() - started,
            error=_error(exc),
        )
        if not job["multirun"]:
            raise
        user = find_user_error(exc)
        if user is not None:
            log.error("error: %s (job folder %s)", user, out_dir)
        else:
            log.error("job failed (folder %s)", out_dir, exc_info=exc)
        metrics = None
    if metrics is None:  # outside the except block, so that the traceback's frames are free
        _release_memory()
        return None
    kinds = record.data.get("metric_kinds", {})
    record.update(
        status="finished",
        end_time=now_iso(),
        wall_time_s=time.time() - started,
        metric_kinds={name: kinds.get(name) or metric_kind(name) for name in sorted(metrics)},
    )
    return metrics


def launch_outcomes(sweep_dir: Path, since: float) -> dict[str, list[tuple[Path, dict]]]:
    """The jobs of `sweep_dir` that started (or were skipped) at or after `since` (POSIX
    seconds), by outcome: "finished", "failed", "skipped", "unfinished" (still running, or
    killed)."""
    outcomes: dict[str, list[tuple[Path, dict]]] = {
        "finished": [],
        "failed": [],
        "skipped": [],
        "unfinished": [],
    }

    def since_launch(stamp) -> bool:
        try:
            return iso_seconds(stamp) >= since
        except (TypeError, ValueError):
            return False

    for path in sorted(sweep_dir.rglob(RUN_RECORD)):
        record = read_json(path)
        if record is None:
            continue
        last = (record.get("attempts") or [{}])[-1]
        if last.get("status") == "skipped" and since_launch(last.get("start_time")):
            outcomes["skipped"].append((path.parent, record))
        elif since_launch(record.get("start_time")):
            status = record.get("status")
            outcome = status if status in ("finished", "failed") else "unfinished"
            outcomes[outcome].append((path.parent, record))
    return outcomes


class SweepSummary(Callback):
    """At the end of a multirun, print its jobs by outcome (from the `run.json` files in the
    sweep dir, so that jobs run by any launcher count) and exit with status 1 if one failed
    or did not finish."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes = launch_outcomes(sweep_dir, int(self.started))
        counts = ", ".join(f"{len(v)} {k}" for k, v in outcomes.items())
        lines = [f"multirun {sweep_dir}: {counts}"]
        for folder, record in outcomes["failed"]:
            error = record.get("error") or {}
            message = str(error.get("message", "")).strip().splitlines() or [""]
            lines.append(f"  failed: {folder}  {error.get('type', '')}: {message[0][:300]}")
        lines += [f"  did not finish: {folder}" for folder, _ in outcomes["unfinished"]]
        print("\n".join(lines), flush=True)
        if outcomes["failed"] or outcomes["unfinished"]:
            sys.exit(1)
