"""Runs that leave a record, and multiruns that keep going.

`run_recorded` wraps a task (`gmlab-train`, `gmlab-eval`): it writes the run folder's
`run.json` (status running -> finished / failed) and, in a multirun, turns any failure of
one job into a record + `None` for the sweeper so that the other jobs run. A relaunch into
the same `hydra.sweep.dir` skips the jobs that finished and resumes the others from their own
`checkpoints/last.ckpt`: jobs are matched by `job_key` (their overrides), and the
`gmlab.job_subdir` resolver (conf/hydra/default.yaml) puts a job back into the folder of its
earlier launch. `SweepSummary` (a Hydra callback) prints what the multirun did and makes its
exit status non-zero when a job failed, did not finish, was interrupted or is held by
another launch. Each launch has an id (`GMLAB_LAUNCH`, inherited by the job processes of
any launcher), recorded in the run records, so that a summary counts its own jobs only.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gmlab.errors import GmlabError
from gmlab.utils.cli import find_user_error
from gmlab.utils.joblock import LOCK_FILE, JobLock, describe
from gmlab.utils.metric_kinds import metric_kind
from gmlab.utils.options import warn_divergence
from gmlab.utils.provenance import device_info, git_info, iso_seconds, now_iso, versions
from gmlab.utils.runs import (
    PROJECT_ROOT,
    RUN_RECORD,
    RunRecord,
    read_json,
    read_record,
    write_json_atomic,
)
from gmlab.utils.signals import GUARD, HANDLED

log = logging.getLogger(__name__)
SCHEMA = 1
ATTEMPT_KEYS = (
    "status",
    "signal",
    "start_time",
    "end_time",
    "wall_time_s",
    "ckpt_path",
    "heartbeat",
    "job_key",
    "launch",
    "set_aside",
)
LAUNCH_ENV = "GMLAB_LAUNCH"
HELD_NOTE = ".held"  # <job folder>/.held.<launch>.json: skipped, another process holds it
LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
)
OUTCOMES = ("finished", "failed", "skipped", "unfinished", "interrupted")
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # jobs in-process


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
    """This Hydra job's output dir, overrides, multirun position and launch; None outside
    Hydra."""
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
        "launch": os.environ.get(LAUNCH_ENV) if multirun else None,
    }


def route_library_logs() -> None:
    """Let Lightning's messages reach the job's log file (`train.log`, `eval.log`).

    Lightning, imported before Hydra configures logging (the entry points import it at the
    top), gives its loggers a console handler of their own and stops them propagating to
    the root logger, which holds Hydra's file handler: the log file stayed empty. Once the
    root logger has handlers, this hands Lightning's records back to it."""
    if not logging.getLogger().handlers:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def _log_to_file(level: int, message: str, exc: BaseException | None = None) -> None:
    """`message` (with `exc`'s traceback) into the job's log file only: the terminal shows
    the CLI's own `error:` line or Hydra's traceback."""
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    entry = log.makeRecord(log.name, level, __file__, 0, message, (), info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(entry)


def _attempt(record: dict) -> dict:
    attempt = {k: record.get(k) for k in ATTEMPT_KEYS}
    if record.get("error"):
        attempt["error"] = {k: record["error"].get(k) for k in ("type", "message")}
    return attempt


def _new_record(cfg: DictConfig, task: str, job: dict, key: str, earlier: dict | None) -> dict:
    """A fresh record; `earlier` (the folder's record, of this job or another) becomes the
    last entry of `attempts`."""
    trainer = cfg.get("trainer") or {}
    attempts = [*earlier.get("attempts", []), _attempt(earlier)] if earlier else []
    return {
        "schema": SCHEMA,
        "task": task,
        "status": "running",
        "signal": None,
        "start_time": now_iso(),
        "end_time": None,
        "wall_time_s": None,
        "heartbeat": None,
        "overrides": job["overrides"],
        "job_key": key,
        "sweep_dir": job["sweep_dir"],
        "job_num": job["job_num"],
        "launch": job["launch"],
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
    The folder is held (`gmlab.utils.joblock`) for the whole job: a folder held by another
    live process is skipped in a multirun and an error for a single run. A signal
    (`gmlab.utils.signals`) is recorded as `interrupted` and ends the run, or the whole
    launch of a multirun run in this process, with exit status 128 + its number.
    Outside Hydra `work(cfg, None)` runs unrecorded; so it does on the ranks > 0 of a
    distributed run, after the same skip / resume decision as rank 0.
    """
    job = _job()
    if job is None:
        return work(cfg, None)
    route_library_logs()
    writes = _rank() == 0
    lock = JobLock(job["out_dir"]) if writes else None
    if lock is not None and not lock.acquire():
        return _held_elsewhere(job, lock.holder)
    try:
        return _run_job(cfg, task, work, job, writes)
    finally:
        if lock is not None:
            lock.release()


def _held_elsewhere(job: dict, holder: dict | None) -> None:
    out_dir, who = job["out_dir"], describe(holder)
    if not job["multirun"]:
        raise GmlabError(
            f"run folder {out_dir} is in use by {who} (see its {LOCK_FILE}); wait for that "
            "run to end, or give another hydra.run.dir."
        )
    log.warning("skipped: %s held by %s", out_dir, who)
    if job["launch"]:
        note = {"held_by": who, "time": now_iso()}
        write_json_atomic(out_dir / f"{HELD_NOTE}.{job['launch']}.json", note)


def _run_job(cfg: DictConfig, task: str, work: Work, job: dict, writes: bool) -> dict | None:
    out_dir = job["out_dir"]
    key = job_key(job["overrides"], task)
    earlier = read_record(out_dir)
    same_job = earlier if earlier and earlier.get("job_key") == key else None
    if job["multirun"] and same_job:
        metrics = read_json(out_dir / "metrics.json")
        if same_job.get("status") == "finished" and metrics is not None:
            if writes:
                skip = {"status": "skipped", "start_time": now_iso(), "end_time": now_iso()}
                attempts = [*same_job.get("attempts", []), {**skip, "launch": job["launch"]}]
                RunRecord(out_dir, same_job).update(attempts=attempts)
                log.info("skipped: finished in an earlier launch (%s)", out_dir)
            return metrics
        if task == "train" and cfg.get("ckpt_path") is None:
            cfg.ckpt_path = "last"
    record = RunRecord(out_dir, _new_record(cfg, task, job, key, earlier)) if writes else None
    if record is not None:
        record.update()
    guarded = GUARD.install()
    started = time.time()
    try:
        if record is not None:
            record.keep_room()
        metrics = work(cfg, record)
    except BaseException as exc:
        if guarded and GUARD.received is not None:
            return _interrupted(record, job, GUARD.received, started)
        if not isinstance(exc, Exception):
            raise
        _failed(record, job, exc, started)
        if not job["multirun"]:
            raise
        metrics = None
    finally:
        GUARD.uninstall()
    if metrics is None:  # outside the except block, so that the traceback's frames are free
        _release_memory()
        return None
    if record is not None:
        kinds = record.data.get("metric_kinds", {})
        record.finish(
            status="finished",
            end_time=now_iso(),
            wall_time_s=time.time() - started,
            metric_kinds={name: kinds.get(name) or metric_kind(name) for name in sorted(metrics)},
            warnings=warn_divergence(metrics),
        )
    return metrics


def _failed(record: RunRecord | None, job: dict, exc: Exception, started: float) -> None:
    """Record and log a failure."""
    if record is not None:
        record.finish(
            status="failed",
            end_time=now_iso(),
            wall_time_s=time.time() - started,
            error=_error(exc),
        )
    user = find_user_error(exc)
    if not job["multirun"]:
        _log_to_file(logging.ERROR, f"error: {user}" if user else "failed", None if user else exc)
    elif user is not None:
        log.error("error: %s (job folder %s)", user, job["out_dir"])
    else:
        log.error("job failed (folder %s)", job["out_dir"], exc_info=exc)


def _interrupted(record: RunRecord | None, job: dict, signum: int, started: float) -> None:
    """Record a run ended by signal `signum`, hand the signal on to the handler it had
    before (submitit's requeue), then exit with 128 + signum: the run, a submitit job that
    SLURM runs again (`_slurm_runs_it_again`: no result, so submitit's launcher waits for
    the requeued run, which resumes from `last.ckpt`), or the launch of a multirun whose
    summary runs in this process (the handed-on signal reaches `SweepSummary.ended_by`,
    which prints the summary first). Any other job of a launcher that runs
    each job in a process of its own (submitit) returns None, so that its launcher's
    summary reports it."""
    name = signal.Signals(signum).name
    if record is not None:
        record.finish(
            status="interrupted",
            signal=name,
            end_time=now_iso(),
            wall_time_s=time.time() - started,
        )
    log.warning(
        "interrupted by %s (run folder %s); the same command resumes it", name, job["out_dir"]
    )
    GUARD.pass_on()
    if not job["multirun"] or _slurm_runs_it_again():
        raise SystemExit(128 + signum)


def _slurm_runs_it_again() -> bool:
    """Whether this process is a submitit job on SLURM (`SUBMITIT_EXECUTOR=slurm`) that SLURM
    will run again. SLURM sends SIGTERM both to `scancel` and to a job it requeues
    (`scontrol requeue`, preemption), and while the job ends `scontrol show job` says
    `JobState=COMPLETING` for both; but a requeue raises the job's `Restarts` count at once,
    above the `SLURM_RESTART_COUNT` this run started with (unset: 0), and a cancel does not
    (seen on the test node). A job whose count cannot be read is taken as requeued: if it
    was not, submitit's launcher fails on the missing result, rather than return while SLURM
    still runs the job."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not job_id:
        return False
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True
    if "JobState=CANCELLED" in shown:
        return False
    restarts = re.search(r"\bRestarts=(\d+)", shown)
    started_at = os.environ.get("SLURM_RESTART_COUNT", "0")
    if restarts is None or not started_at.isdigit():
        return True
    return int(restarts.group(1)) > int(started_at)


def launch_outcomes(
    sweep_dir: Path, since: float, launch: str | None = None
) -> dict[str, list[tuple[Path, dict]]]:
    """The jobs of `sweep_dir` of one launch, by outcome: "finished", "failed", "skipped"
    (finished earlier, or held by another process: `held_by`), "unfinished" (still running,
    or killed), "interrupted" (by a signal). A record belongs to launch `launch` when it names
    it; a record without one (an older gmlab) when it started at or after `since` (POSIX
    seconds)."""
    outcomes: dict[str, list[tuple[Path, dict]]] = {name: [] for name in OUTCOMES}

    def ours(entry: dict) -> bool:
        if launch and entry.get("launch"):
            return entry["launch"] == launch
        try:
            return iso_seconds(entry.get("start_time")) >= since
        except (TypeError, ValueError):
            return False

    for path in sorted(sweep_dir.rglob(RUN_RECORD)):
        record = read_json(path)
        if record is None:
            continue
        last = (record.get("attempts") or [{}])[-1]
        if last.get("status") == "skipped" and ours(last):
            outcomes["skipped"].append((path.parent, record))
        elif ours(record):
            status = record.get("status")
            outcome = status if status in ("finished", "failed", "interrupted") else "unfinished"
            outcomes[outcome].append((path.parent, record))
    if launch:
        for path in sorted(sweep_dir.rglob(f"{HELD_NOTE}.{launch}.json")):
            outcomes["skipped"].append((path.parent, read_json(path) or {"held_by": "?"}))
    return outcomes


class SweepSummary(Callback):
    """At the end of a multirun, print its jobs by outcome (from the `run.json` files in the
    sweep dir, so that jobs run by any launcher count) and exit with status 1 if one failed,
    did not finish, was interrupted or is held by another launch. A signal that ends a job of
    a multirun run in this process (Hydra's basic launcher), or comes between two of its
    jobs, ends the launch: the summary prints, with the jobs that did not run, and the exit
    status is 128 + the signal's number (`ended_by`, the launch's handler of the four
    signals; each job's `GUARD` hands its signal on to it)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.sweep_dir: Path | None = None
        self.launch: str | None = None
        self.previous_handlers: dict[int, object] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.launch = uuid.uuid4().hex[:12]
        os.environ[LAUNCH_ENV] = self.launch
        in_process = config.hydra.launcher.get("_target_") == BASIC_LAUNCHER
        if in_process and threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self.previous_handlers[signum] = signal.signal(signum, self.ended_by)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous_handlers = {}
        if self.report():
            sys.exit(1)

    def ended_by(self, signum: int, frame) -> None:
        """End the launch with its summary and status 128 + signum: a signal between two
        jobs, or one a job was interrupted by and handed on (`GUARD.pass_on`)."""
        self.report(interrupted=signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    def report(self, interrupted: str | None = None) -> bool:
        """Print the summary; True if anything of this launch is not done."""
        outcomes = launch_outcomes(self.sweep_dir, int(self.started), self.launch)
        counts = ", ".join(f"{len(v)} {k}" for k, v in outcomes.items())
        lines = [f"multirun {self.sweep_dir}: {counts}"]
        for folder, record in outcomes["failed"]:
            error = record.get("error") or {}
            message = str(error.get("message", "")).strip().splitlines() or [""]
            lines.append(f"  failed: {folder}  {error.get('type', '')}: {message[0][:300]}")
        lines += [f"  did not finish: {folder}" for folder, _ in outcomes["unfinished"]]
        for folder, record in outcomes["interrupted"]:
            lines.append(f"  interrupted: {folder}  by {record.get('signal')}")
        held = [(folder, note) for folder, note in outcomes["skipped"] if "held_by" in note]
        lines += [f"  skipped: {folder}  held by {note['held_by']}" for folder, note in held]
        if interrupted:
            lines.append(f"  not run: the rest of this launch (interrupted by {interrupted})")
        print("\n".join(lines), flush=True)
        return bool(outcomes["failed"] or outcomes["unfinished"] or outcomes["interrupted"] or held)
