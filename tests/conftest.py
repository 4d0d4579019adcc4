"""Shared test fixtures. Test-only helper modules live in tests/support/ (importable as
`support.*`); the suite never needs a network, a GPU or ../shared."""

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

os.environ.setdefault("GMLAB_ROOT", str(REPO))


@pytest.fixture
def run_env(tmp_path):
    """Environment for subprocess runs of the CLI: outputs under tmp_path, tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["GMLAB_ROOT"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env
