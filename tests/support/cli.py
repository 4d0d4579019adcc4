"""The console scripts (`gmlab-train`, `gmlab-eval`) run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def gmlab(script: str, args: list[str], env, check: bool = True) -> subprocess.CompletedProcess:
    """Run `script args...` beside this interpreter; raise with its output if it fails and
    `check` is set."""
    exe = Path(sys.executable).with_name(script)
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out
