"""The console scripts (`gmlab-train`, `gmlab-eval`, ...) run as a user runs them, each in a
process of its own. By default the process is forked from a server that imported the scripts'
modules once (`support.cli_server`; what it saves: docs/speed.md, "The test suite");
GMLAB_TEST_FRESH_CLI=1 starts every run from the console script's file instead."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300

# a quick, deterministic gmlab-train run: a Gaussian on 2-D points, 4 epochs
POINTS = [
    "model=gaussian",
    "data._target_=support.callbacks.PointsDataModule",
    "~data.test_size",
    "data.shape=[2]",
    "data.batch_size=32",
    "data.val_size=64",
    "trainer.max_epochs=4",
    "trainer.deterministic=true",
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
    "seed=7",
]


def gmlab(script: str, args: list[str], env, check: bool = True) -> subprocess.CompletedProcess:
    """Run `script args...` beside this interpreter; raise with its output if it fails and
    `check` is set."""
    exe = str(Path(sys.executable).with_name(script))
    if os.environ.get("GMLAB_TEST_FRESH_CLI", "") not in ("", "0"):
        command = [exe, *args]
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    else:
        out = forked(script, exe, args, env)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


class CliServer:
    """The `support.cli_server` process of this pytest process, started on first use."""

    lock = threading.Lock()
    process: subprocess.Popen | None = None

    @classmethod
    def send(cls, request: dict) -> subprocess.Popen:
        with cls.lock:
            if cls.process is None or cls.process.poll() is not None:
                path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
                env = {**os.environ, "PYTHONPATH": path}
                server = [sys.executable, "-m", "support.cli_server"]
                cls.process = subprocess.Popen(server, stdin=subprocess.PIPE, env=env, cwd=TESTS)
                atexit.register(cls.stop, cls.process)
            cls.process.stdin.write((json.dumps(request) + "\n").encode())
            cls.process.stdin.flush()
            return cls.process

    @staticmethod
    def stop(process: subprocess.Popen) -> None:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def forked(
    script: str, exe: str, args: list[str], env, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`exe args...` run by the fork server in `cwd` (None: this process's), as
    `subprocess.run(..., capture_output=True, text=True, timeout=TIMEOUT_S)` reports it."""
    folder = tempfile.mkdtemp(prefix="gmlab-cli-")
    out = os.path.join(folder, "run")
    request = {"script": script, "argv0": exe, "args": [str(a) for a in args]}
    request |= {"env": dict(os.environ if env is None else env), "out": out}
    request["cwd"] = str(cwd or os.getcwd())
    try:
        server = CliServer.send(request)
        deadline, timed_out = time.monotonic() + TIMEOUT_S, False
        while not os.path.exists(out + ".status"):
            if server.poll() is not None:
                raise RuntimeError(f"the console-script server ended ({server.returncode})")
            if not timed_out and time.monotonic() > deadline and os.path.exists(out + ".pid"):
                os.killpg(int(Path(out + ".pid").read_text()), signal.SIGKILL)
                timed_out = True
            time.sleep(0.05)
        stdout, stderr = (Path(out + s).read_text(errors="replace") for s in (".stdout", ".stderr"))
        if timed_out:
            raise subprocess.TimeoutExpired([exe, *args], TIMEOUT_S, stdout, stderr)
        code = int(Path(out + ".status").read_text())
        return subprocess.CompletedProcess([exe, *args], code, stdout, stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
