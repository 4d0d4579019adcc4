"""A fork server for the suite's console-script runs (`support.cli.gmlab`).

Most of a console-script test's time is the script's start: importing torch, Lightning,
torchmetrics and Hydra (docs/speed.md, "The test suite"). This server imports the gmlab
console scripts' modules once (and nothing else: it never runs a test) and forks a child
per request. The child is a process of its own, as the console script would be: its own
pid and process group, the request's environment, working folder and command line, stdin
from /dev/null, stdout and stderr into files, the entry point named in the installed
package's metadata, `sys.exit` semantics and the atexit handlers at the end. What it does
not redo is the import, so environment variables read at import time (the OpenMP thread
count, PYTHONWARNINGS) are the server's: tests that vary them start the console script
itself.

Protocol: one JSON object per line on stdin, {"script", "argv0", "args", "env", "cwd",
"out"}. The server writes the child's pid to <out>.pid, and when it ends, its exit status
(negative: the signal that ended it, as `subprocess` reports it) to <out>.status, each
file complete when it appears. EOF on stdin: the server waits for its children and exits.

usage: python -m support.cli_server   (started by support.cli)
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import sys
import traceback
from importlib.metadata import entry_points

SCRIPTS = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("gmlab-")}


def write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def exit_code(code: object) -> int:
    """The process exit status `sys.exit(code)` gives (printing a non-integer code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_child(request: dict) -> None:
    """In the forked child: become the console script run, then exit; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        sys.path[:0] = [p for p in paths if p and p not in sys.path]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
            target = os.open(request["out"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(target, fd)
            os.close(target)
        sys.stdout.reconfigure(line_buffering=True)
        sys.argv = [request["argv0"], *request["args"]]
        try:
            code = exit_code(SCRIPTS[request["script"]].load()())
        except SystemExit as stop:
            code = exit_code(stop.code)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    for script in SCRIPTS.values():
        importlib.import_module(script.module)
    children: dict[int, str] = {}
    pending, reading = b"", True
    while reading or children:
        ready, _, _ = select.select([0] if reading else [], [], [], 0.05)
        if ready:
            chunk = os.read(0, 1 << 16)
            reading = bool(chunk)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    run_child(request)
                children[pid] = request["out"]
                write_atomic(request["out"] + ".pid", str(pid))
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                write_atomic(children.pop(pid) + ".status", str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    serve()
