"""What the SLURM tests add to their jobs: a callback that paces training and logs its steps,
and the commands that run a sweep on the node and read what it left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L


class PacedSteps(L.Callback):
    """Sleep `seconds` after every training step of a run that started at step 0 (a first
    attempt long enough to meet a time limit or a signal, with the numbers it has without
    the sleep; a resumed attempt runs at full speed) and append to `path` one line per event
    of this process: `<pid> start <global_step>` when training starts (the step it resumed
    at) and `<pid> step <global_step>` after each step."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = Path(path), float(seconds)

    def _log(self, event: str, step: int) -> None:
        with self.path.open("a") as f:
            f.write(f"{os.getpid()} {event} {step}\n")

    def on_train_start(self, trainer, pl_module):
        self._log("start", trainer.global_step)
        if trainer.global_step > 0:
            self.seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._log("step", trainer.global_step)
        time.sleep(self.seconds)


def paced(path: Path, seconds: float) -> list[str]:
    """Overrides that add `PacedSteps` to a run."""
    target = "+callbacks.paced"
    return [
        f"{target}._target_=slurm.jobs.PacedSteps",
        f"{target}.path={path}",
        f"{target}.seconds={seconds}",
    ]


def attempts(path: Path) -> list[dict]:
    """The attempts in a `PacedSteps` log, in order: {"start": step resumed at, "steps": [...]}."""
    runs: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        pid, event, step = line.split()
        run = runs.setdefault(pid, {"start": None, "steps": []})
        if event == "start":
            run["start"] = int(step)
        else:
            run["steps"].append(int(step))
    return list(runs.values())


def train(args: list[str], env: dict, timeout: float, **popen) -> subprocess.Popen:
    """Start `gmlab-train args...` beside this interpreter (the caller waits, with `timeout`
    seconds stored on the process as `.timeout`)."""
    exe = Path(sys.executable).with_name("gmlab-train")
    proc = subprocess.Popen(
        [str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.timeout = timeout
    return proc


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for `proc` (at most its `.timeout`); kill it and fail if it runs longer."""
    try:
        out, err = proc.communicate(timeout=proc.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"gmlab-train ran over {proc.timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(condition, timeout: float, what: str) -> None:
    until = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.5)


def slurm_job_ids(sweep: Path) -> list[str]:
    """The SLURM job ids submitit used for `sweep` (its `.submitit/<id>` folders)."""
    folder = sweep / ".submitit"
    names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    return sorted(n for n in names if n.replace("_", "").isdigit())


RUNNING = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING")


def sacct_states(job_ids: list[str], env: dict, timeout: float = 60) -> dict[str, list[str]]:
    """{job id: [state of every run of it, requeued runs included]} from accounting, once
    the last run of each has ended (srun's teardown may outlast the launcher's wait)."""
    states: dict[str, list[str]] = {}

    def ended() -> bool:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        states.clear()
        for line in out.stdout.splitlines():
            job, state = line.split("|")
            states.setdefault(job, []).append(state.split()[0])
        return bool(states) and all(runs[-1] not in RUNNING for runs in states.values())

    wait_until(ended, timeout, f"jobs {job_ids} ended in accounting")
    return dict(states)
