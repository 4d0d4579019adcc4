"""Shared test fixtures. Test-only helper modules live in tests/support/ (importable as
`support.*`); the suite never needs a network, a GPU or ../shared."""

import os
import sys
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(1, str(REPO))  # benchmarks/ (tests/test_benchmarks.py)

os.environ.setdefault("GMLAB_ROOT", str(REPO))


@pytest.fixture
def run_env(tmp_path):
    """Environment for subprocess runs of the CLI: outputs under tmp_path, tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["GMLAB_ROOT"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def one_thread():
    """One torch / BLAS thread, for modules of small tensors and tiny networks: a second
    thread gains them nothing, and on a shared 2-core machine two OpenMP threads that wait
    for each other make such tests 10-100x slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)
