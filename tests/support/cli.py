"""The console scripts (`gmlab-train`, `gmlab-eval`) run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    exe = Path(sys.executable).with_name(script)
    out = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{script} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out
