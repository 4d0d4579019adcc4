"""Tests on a real SLURM node (`scripts/slurm_local.sh up`; `.ci/run` brings it up around
`make test`). They are marked `slurm` and skip, with the reason, when no idle node answers,
so that `make test` passes on a machine without SLURM.

The node is the one whose config `SLURM_CONF` names, else the one `scripts/slurm_local.sh`
made (`$GMLAB_SLURM_DIR/etc/slurm.conf`, default /tmp/gmlab-slurm): never a cluster's
default config by accident."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from slurm.jobs import slurm_job_ids

SLURM_DIR = Path(os.environ.get("GMLAB_SLURM_DIR", "/tmp/gmlab-slurm"))


def slurm_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    conf = SLURM_DIR / "etc" / "slurm.conf"
    return str(conf) if conf.is_file() else None


@functools.cache
def node_problem() -> str | None:
    """Why no test can run on a node here; None when an idle node answers."""
    missing = [cmd for cmd in ("sbatch", "sinfo", "sacct", "scontrol") if not shutil.which(cmd)]
    if missing:
        return f"{', '.join(missing)} not found (scripts/slurm_local.sh up)"
    conf = slurm_conf()
    if conf is None:
        return f"no SLURM_CONF and no {SLURM_DIR}/etc/slurm.conf (scripts/slurm_local.sh up)"
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return f"sinfo ({conf}) did not answer in 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.startswith(("idle", "mix")) for s in states):
        return f"no idle node in {conf}: {out.stderr.strip() or states}"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("slurm") and (why := node_problem()):
        pytest.skip(f"no SLURM node: {why}")


@pytest.fixture
def slurm_env(run_env, tmp_path):
    """`run_env` that reaches the node, with one thread per process (the node's jobs share
    its cores). The jobs submitted under `tmp_path` are cancelled at the end of the test."""
    env = {**run_env, "SLURM_CONF": slurm_conf(), "OMP_NUM_THREADS": "1"}
    yield env
    ids = [i for sub in tmp_path.glob("**/.submitit") for i in slurm_job_ids(sub.parent)]
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)
