"""Signals end a run without losing it: `last.ckpt` at the step the signal came, the record
`interrupted` with the signal, exit status 128 + signum, a sweep's summary, and a resume
that continues from there (real `gmlab-train` subprocesses on the bundled digits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.faults import signal_once
from support.sweeps import record

from gmlab.utils.signals import HANDLED, Interrupted, SignalGuard

# a gradient model on the digits: 22 optimizer steps per epoch
DIGITS = [
    "model=gaussian",
    "data.batch_size=64",
    "trainer.deterministic=true",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
    "~callbacks.image_grids",
]
STEPS_PER_EPOCH = 22  # ceil((1797 - 150 - 297) / 64)


def steps(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture
def guard():
    g = SignalGuard()
    assert g.install()
    yield g
    g.uninstall()


def test_a_signal_outside_training_interrupts_at_once(guard):
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(1)  # the handler runs between bytecodes; never reached
    assert caught.value.name == "SIGUSR2" and caught.value.exit_code == 128 + signal.SIGUSR2


def test_a_held_signal_waits_for_the_safe_point_and_a_second_one_does_not(guard):
    guard.deferred = True
    os.kill(os.getpid(), signal.SIGTERM)  # held: no exception here
    assert guard.received == signal.SIGTERM
    with pytest.raises(Interrupted, match="SIGTERM"):
        guard.check()
    guard.received, guard.deferred = None, True
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(Interrupted, match="SIGINT"):
        os.kill(os.getpid(), signal.SIGUSR1)
    assert guard.deferred is False  # not at a safe point: nothing is saved on the way out


def test_the_earlier_handler_gets_the_signal_passed_on_and_back_on_uninstall():
    calls = []

    def earlier(signum, frame):
        calls.append(signum)

    before = {s: signal.signal(s, earlier) for s in HANDLED}
    try:
        g = SignalGuard()
        g.install()
        g.deferred = True
        os.kill(os.getpid(), signal.SIGUSR2)
        assert calls == []  # gmlab's handler holds it first
        g.pass_on()
        assert calls == [signal.SIGUSR2]  # as submitit's requeue would get it
        g.uninstall()
        assert all(signal.getsignal(s) is earlier for s in HANDLED)
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shown", "started_at", "again"),
    [
        ("JobState=COMPLETING Restarts=1", None, True),  # scontrol requeue / preemption
        ("JobState=COMPLETING Restarts=0", None, False),  # scancel
        ("JobState=COMPLETING Restarts=3", "2", True),  # a third requeue
        ("JobState=COMPLETING Restarts=2", "2", False),  # scancel after two requeues
        ("JobState=CANCELLED Restarts=1", "1", False),
        ("", None, True),  # scontrol failed: taken as requeued
    ],
)
def test_a_slurm_job_tells_a_requeue_from_a_cancel_by_its_restart_count(
    tmp_path, monkeypatch, shown, started_at, again
):
    """Both send SIGTERM and show JobState=COMPLETING; a requeue raises `Restarts` above
    the SLURM_RESTART_COUNT the job started with (what the node showed in both cases:
    tests/slurm). A stand-in `scontrol` on PATH prints the job line."""
    from gmlab.utils.sweep import _slurm_runs_it_again

    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho 'JobId=7 JobName=x {shown} BatchFlag=1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    if started_at is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", started_at)
    assert _slurm_runs_it_again() is again
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")  # not on SLURM: never run again
    assert _slurm_runs_it_again() is False


def test_sigterm_mid_training_saves_records_exits_143_and_resumes(tmp_path, run_env):
    """SIGTERM from outside once a step has been saved: exit status 143, `interrupted` with
    SIGTERM, a loadable `last.ckpt` at or after the last saved step, and the same command
    (a shorter max_epochs: a resume-safe key) resumes from it."""
    run = tmp_path / "run"
    args = [*DIGITS, f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_epochs=500"]
    args += ["+callbacks.slow._target_=support.faults.SlowSteps", "+callbacks.slow.seconds=0.02"]
    exe = Path(sys.executable).with_name("gmlab-train")
    proc = subprocess.Popen([str(exe), *args], env=run_env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        rec = record(run) if (run / "run.json").is_file() else {}
        if rec.get("status") == "running" and (run / "checkpoints" / "last.ckpt").is_file():
            break  # a checkpoint (and so a step) happened
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    saved_before = steps(run / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    rec = record(run)
    assert rec["status"] == "interrupted" and rec["signal"] == "SIGTERM"
    assert rec["end_time"] is not None
    assert "interrupted by SIGTERM" in (run / "train.log").read_text()
    last = run / "checkpoints" / "last.ckpt"
    at_signal = steps(last)
    assert at_signal >= saved_before > 0
    assert not list(run.rglob("*.partial"))

    from gmlab.utils.checkpoint import load_model

    assert load_model(last) is not None
    shorter = [a if a != "trainer.max_epochs=500" else "trainer.max_epochs=1" for a in args]
    resumed = subprocess.run([str(exe), *shorter], env=run_env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    rec = record(run)
    assert rec["status"] == "finished" and rec["ckpt_path"] == str(last)
    assert [(a["status"], a["signal"]) for a in rec["attempts"]] == [("interrupted", "SIGTERM")]
    assert steps(last) >= at_signal


@pytest.mark.slow
def test_a_signal_in_a_sweep_ends_the_launch_with_its_summary_and_a_relaunch_finishes(
    tmp_path, run_env
):
    """SIGUSR1 at step 4 of epoch 1 of job 0: last.ckpt holds exactly the 22 + 4 steps done,
    the launch stops (jobs 1 and 2 never start) with the summary and status 138; the same
    command resumes job 0 to the same step count as the uninterrupted jobs."""
    from support.cli import gmlab

    sweep = tmp_path / "sweep"
    args = ["-m", "+label=a,b,c", *DIGITS, "trainer.max_epochs=3", f"hydra.sweep.dir={sweep}"]
    args += signal_once(tmp_path / "signalled", epoch=1, batch=3, signum="SIGUSR1")
    first = gmlab("gmlab-train", args, run_env, check=False)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr
    summary = f"multirun {sweep}: 0 finished, 0 failed, 0 skipped, 0 unfinished, 1 interrupted"
    assert summary in first.stdout
    assert f"interrupted: {sweep / '0'}  by SIGUSR1" in first.stdout
    assert "not run: the rest of this launch (interrupted by SIGUSR1)" in first.stdout
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    assert record(sweep / "0")["status"] == "interrupted"
    assert steps(sweep / "0" / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH + 4

    second = gmlab("gmlab-train", args, run_env)
    assert "3 finished, 0 failed, 0 skipped, 0 unfinished, 0 interrupted" in second.stdout
    for job in ("0", "1", "2"):
        assert steps(sweep / job / "checkpoints" / "last.ckpt") == 3 * STEPS_PER_EPOCH
    assert [a["status"] for a in record(sweep / "0")["attempts"]] == ["interrupted"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_between_two_jobs_ends_the_launch_with_its_summary(tmp_path, run_env, signum):
    """The signal comes after job 0 has finished and before job 1 starts (no run holds the
    signals then): the launch still ends with its summary, no traceback and status 128 +
    the signal's number; the same command runs the other two jobs."""
    from support.cli import gmlab

    sweep, marker = tmp_path / "sweep", tmp_path / "signalled"
    args = ["-m", "+label=a,b,c", *DIGITS, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    args += ["+hydra.callbacks.signal._target_=support.faults.SignalAfterFirstJob"]
    args += [f"+hydra.callbacks.signal.marker={marker}", f"+hydra.callbacks.signal.signum={signum}"]
    first = gmlab("gmlab-train", args, run_env, check=False)
    assert first.returncode == 128 + signal.Signals[signum], first.stdout + first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    summary = f"multirun {sweep}: 1 finished, 0 failed, 0 skipped, 0 unfinished, 0 interrupted"
    assert summary in first.stdout
    assert f"not run: the rest of this launch (interrupted by {signum})" in first.stdout
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    assert record(sweep / "0")["status"] == "finished"

    gmlab("gmlab-train", args, run_env)
    assert [record(sweep / job)["status"] for job in "012"] == ["finished"] * 3
