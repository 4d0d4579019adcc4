"""One process per run folder: `<run>/job.lock` names its holder and a heartbeat.

The lock file holds `{"host", "pid", "started", "heartbeat", "token", "slurm_job"}`
(times ISO-8601 UTC). It is created with `O_CREAT | O_EXCL` (one creator wins, also on NFS),
and a thread of the holder rewrites its heartbeat every `HEARTBEAT_S` seconds. A lock is
stale, and is taken over, when its pid is dead on this host, when its heartbeat is older
than `STALE_AFTER_S` (a holder on another host that died, or a frozen file system), or when
it names this process's own SLURM job (`slurm_job`: a requeued job, possibly on another
node, takes over from its killed earlier run at once; SLURM runs one instance of a job). A
takeover happens under the directory `job.lock.takeover` (`mkdir` is atomic), after reading
the same stale content again, so that two launches cannot both take one stale lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from gmlab.utils.provenance import iso_seconds, now_iso

LOCK_FILE = "job.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def slurm_job() -> str | None:
    """This process's SLURM job (`<array job>_<task>` or the job id); None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def describe(owner: dict | None) -> str:
    """`host:pid` of a lock's holder."""
    owner = owner or {}
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"


class JobLock:
    """The lock of run folder `folder`: `acquire` -> bool, `release`; `holder` is the
    owner found when `acquire` failed."""

    def __init__(
        self, folder: Path, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now_iso(),
            "token": uuid.uuid4().hex,  # tells two locks of one process apart
            "slurm_job": slurm_job(),
        }
        self.holder: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[dict | None, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None, ""
        try:
            owner = json.loads(text)
        except ValueError:
            owner = None  # being written: held, unless the file is old
        return (owner if isinstance(owner, dict) else None), text

    def stale(self, owner: dict | None) -> bool:
        """Whether a lock with this content (None: unreadable) may be taken over."""
        if owner is None:
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_after_s
            except FileNotFoundError:
                return True
        if owner.get("host") == self.me["host"] and not _pid_alive(int(owner.get("pid", -1))):
            return True
        if self.me["slurm_job"] and owner.get("slurm_job") == self.me["slurm_job"]:
            return owner.get("token") != self.me["token"]
        try:
            return time.time() - iso_seconds(owner["heartbeat"]) > self.stale_after_s
        except (KeyError, TypeError, ValueError):
            return True

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({**self.me, "heartbeat": now_iso()}, handle)
        return True

    def _take_over(self, text: str) -> None:
        """Remove the lock if it still holds `text` (a stale lock), under the takeover dir."""
        mutex = self.path.with_name(f"{LOCK_FILE}.takeover")
        try:
            mutex.mkdir()
        except FileExistsError:
            if time.time() - mutex.stat().st_mtime > self.stale_after_s:
                mutex.rmdir()  # left by a process killed while taking over
            return
        try:
            if self._read()[1] == text:
                self.path.unlink(missing_ok=True)
        finally:
            mutex.rmdir()

    def acquire(self) -> bool:
        """Hold the folder; False (and `holder` set) when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return True
            owner, text = self._read()
            if not self.stale(owner):
                self.holder = owner or {}
                return False
            self._take_over(text)
        self.holder = self._read()[0] or {}
        return False

    def _mine(self) -> bool:
        return (self._read()[0] or {}).get("token") == self.me["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._mine():
                return
            tmp = self.path.with_name(f"{LOCK_FILE}.{self.me['pid']}.partial")
            try:
                tmp.write_text(json.dumps({**self.me, "heartbeat": now_iso()}))
                os.replace(tmp, self.path)
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if this process still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mine():
            self.path.unlink(missing_ok=True)
