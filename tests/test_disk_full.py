"""A full disk: the failure is recorded, the error is one line, and no staging file is left
in the run folder or in $TMPDIR."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import gmlab
from support.sweeps import record

from gmlab.utils.runs import RESERVE_BYTES, DiskFullError, RunRecord, read_json, write_atomic


def test_write_atomic_turns_enospc_into_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old")

    def full(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as caught:
        write_atomic(target, full)
    assert str(caught.value) == f"no space left on device while writing {target}"
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no .partial


def test_write_atomic_stages_beside_the_destination_not_in_tmpdir(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    seen = []
    write_atomic(tmp_path / "run" / "f.bin", lambda h: seen.append(Path(h.name)))
    assert seen == [tmp_path / "run" / "f.bin.partial"]
    assert list(tmpdir.iterdir()) == [] and (tmp_path / "run" / "f.bin").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {out.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_the_reserve_gives_the_final_record_room_on_a_full_disk(small_disk):
    rec = RunRecord(small_disk / "run", {"status": "running"})
    rec.update()
    rec.keep_room()
    assert (small_disk / "run" / "run.json.reserve").stat().st_size == RESERVE_BYTES
    with open(small_disk / "filler", "wb", buffering=0) as handle, pytest.raises(OSError):
        while True:
            handle.write(bytes(4096))
    with pytest.raises(DiskFullError):
        rec.update(heartbeat="now", padding="x" * 8192)  # an ordinary update: no room
    rec.finish(status="failed", error={"message": "y" * 8192})
    assert read_json(small_disk / "run" / "run.json")["status"] == "failed"
    assert sorted(os.listdir(small_disk / "run")) == ["run.json"]


@pytest.mark.slow
def test_a_run_that_fills_its_disk_records_the_failure_in_one_line(small_disk, tmp_path, run_env):
    run, tmpdir = small_disk / "run", tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**run_env, "TMPDIR": str(tmpdir)}
    args = ["model=gaussian", "trainer.max_epochs=2", f"hydra.run.dir={run}"]
    args += ["~callbacks.progress_bar", "~callbacks.model_summary", "~callbacks.image_grids"]
    args += [
        "+callbacks.fill._target_=support.faults.FillDisk",
        f"+callbacks.fill.path={small_disk / 'filler'}",
    ]
    out = gmlab("gmlab-train", args, env, check=False)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: no space left on device while writing {run / 'checkpoints'}/best-000.ckpt"
    ]
    assert "Traceback" not in out.stderr
    rec = record(run)
    assert rec["status"] == "failed" and rec["error"]["type"] == "DiskFullError"
    assert not list(small_disk.rglob("*.partial")) and not list(small_disk.rglob("*.tmp"))
    assert not (run / "run.json.reserve").exists()
    assert list(tmpdir.iterdir()) == []
