"""The suite's fork server (`support.cli_server`) against the console scripts themselves: the
same exit status, output, environment and working folder as `subprocess.run` of the script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.cli import POINTS, forked


def fresh(script: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name(script))
    return subprocess.run([exe, *args], env=env, cwd=cwd, capture_output=True, text=True)


def served(script: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return forked(script, str(Path(sys.executable).with_name(script)), args, env, cwd)


def test_a_user_error_has_the_scripts_status_and_paragraph(run_env, tmp_path):
    args = ["seed=abc", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"]
    server = served("gmlab-train", args, run_env, tmp_path)
    real = fresh("gmlab-train", args, run_env, tmp_path)
    assert real.returncode == 1 and "error: seed must be an integer" in real.stderr
    assert server.returncode == real.returncode
    assert server.stderr == real.stderr and server.stdout == real.stdout


def test_a_run_sees_the_requests_environment(run_env, tmp_path):
    """No hydra.run.dir: the run folder goes under the request's $GMLAB_ROOT/outputs; a data
    module importable only through the request's PYTHONPATH trains."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "my_points.py").write_text(
        "from support.callbacks import PointsDataModule as Points\n"
    )
    path = os.pathsep.join([str(tmp_path / "extra"), run_env["PYTHONPATH"]])
    args = [*POINTS, "data._target_=my_points.Points", "trainer.max_epochs=1"]
    for name, run in (("served", served), ("real", fresh)):
        env = {**run_env, "PYTHONPATH": path, "GMLAB_ROOT": str(tmp_path / name)}
        (tmp_path / name).mkdir()
        out = run("gmlab-train", args, env, tmp_path)
        assert out.returncode == 0, out.stderr
        runs = list((tmp_path / name / "outputs").rglob("run.json"))
        assert len(runs) == 1, name
