"""One process per run folder: the lock, its heartbeat, stale locks taken over, and two
launches of one sweep at the same time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.sweeps import record

from gmlab.utils.joblock import LOCK_FILE, JobLock
from gmlab.utils.provenance import iso_seconds, now_iso


def write_lock(folder: Path, **owner) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(owner))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_held_folder_is_refused_and_released(tmp_path):
    first, second = JobLock(tmp_path), JobLock(tmp_path)
    assert first.acquire()
    owner = json.loads((tmp_path / LOCK_FILE).read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == first.me["pid"]
    assert abs(iso_seconds(owner["heartbeat"]) - time.time()) < 5
    assert not second.acquire()  # this process is alive: the lock holds
    assert second.holder["pid"] == owner["pid"]
    second.release()  # not the holder: leaves the lock alone
    assert (tmp_path / LOCK_FILE).is_file()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    assert second.acquire()
    second.release()


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path):
    here, other = socket.gethostname(), "elsewhere.example"
    old = "2000-01-01T00:00:00+00:00"
    write_lock(tmp_path / "dead", host=here, pid=dead_pid(), heartbeat=now_iso())
    write_lock(tmp_path / "silent", host=other, pid=1, heartbeat=old)
    write_lock(tmp_path / "live", host=other, pid=1, heartbeat=now_iso())
    for name, taken in (("dead", True), ("silent", True), ("live", False)):
        lock = JobLock(tmp_path / name, stale_after_s=60)
        assert lock.acquire() is taken, name
        if taken:
            assert json.loads((tmp_path / name / LOCK_FILE).read_text())["pid"] == lock.me["pid"]
        lock.release()


def test_a_requeued_slurm_job_takes_over_from_its_killed_run_on_another_node(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    write_lock(tmp_path / "mine", host="node1", pid=1, heartbeat=now_iso(), slurm_job="4242")
    write_lock(tmp_path / "other", host="node1", pid=1, heartbeat=now_iso(), slurm_job="4243")
    for name, taken in (("mine", True), ("other", False)):
        lock = JobLock(tmp_path / name)
        assert lock.acquire() is taken, name
        lock.release()


def test_the_holder_beats_its_heartbeat(tmp_path):
    lock = JobLock(tmp_path, heartbeat_s=0.2)
    assert lock.acquire()
    first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    time.sleep(1.6)
    later = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
    lock.release()
    assert iso_seconds(later) > iso_seconds(first)


@pytest.mark.slow
def test_two_launches_of_one_sweep_train_each_job_once(tmp_path, run_env):
    """Two identical launches started together: every job trains in exactly one of them,
    the other skips it (held, or finished by then); no `-v1` checkpoints; each summary says
    what it did."""
    from support.cli import POINTS

    sweep = tmp_path / "sweep"
    args = ["-m", "+label=a,b,c", *POINTS, f"hydra.sweep.dir={sweep}"]
    args += ["+callbacks.slow._target_=support.faults.SlowSteps", "+callbacks.slow.seconds=0.05"]
    exe = Path(sys.executable).with_name("gmlab-train")
    procs = [
        subprocess.Popen([str(exe), *args], env=run_env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    summaries = [
        next(line for line in out.splitlines() if line.startswith("multirun")) for out in outs
    ]
    finished = [int(s.split(": ")[1].split(" finished")[0]) for s in summaries]
    assert sum(finished) == 3, summaries
    for folder in ("0", "1", "2"):
        rec = record(sweep / folder)
        assert rec["status"] == "finished"
        ran = [a for a in rec["attempts"] if a["status"] != "skipped"]
        assert ran == [], rec["attempts"]  # trained once: no earlier attempt in this folder
        assert sorted(p.name for p in (sweep / folder / "checkpoints").iterdir()) == [
            "best-003.ckpt",
            "last.ckpt",
        ]
        assert not (sweep / folder / LOCK_FILE).exists()
    for proc, out in zip(procs, outs, strict=True):
        held = [line for line in out.splitlines() if "held by" in line]
        assert proc.returncode == (1 if held else 0), out
        assert all(f"held by {socket.gethostname()}:" in line for line in held)
