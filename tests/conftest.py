"""Shared test fixtures. Test-only helper modules live in tests/support/ (importable as
`support.*`); the suite never needs a network, a GPU or ../shared, and never writes into the
repository (the session guard below fails the run if it did)."""

import hashlib
import os
import subprocess
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

# `make test` runs the suite in two pytest-xdist workers, one per core: each worker and the
# console scripts it starts keep to one torch / OpenMP thread, as two threads per worker
# would oversubscribe the cores (OpenMP threads that wait for each other)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# ----------------------------------------------------------------- repository guard
RUN_FOLDERS = ("outputs", "multirun", "lightning_logs", "runs")  # where stray runs land
RUN_DEPTH = 3  # outputs/<task>/runs/<run>: deeper writes show as a folder's new mtime
_BEFORE = pytest.StashKey[tuple]()  # (run folders, git files) at the session's start
_CHANGED = pytest.StashKey[tuple]()  # the paths of each that differ at its end


def _git_dirty() -> list[str]:
    """Paths that differ from HEAD: modified or deleted tracked files and untracked files
    that .gitignore does not cover ([] outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "-z", "-uall"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    entries, paths = iter(out.split("\0")), []
    for entry in entries:
        if entry:
            paths.append(entry[3:])
            if entry[0] in "RC":  # a staged rename or copy: its source follows
                next(entries, None)
    return paths


def _fingerprint(path: Path) -> str:
    """sha1 of a file's content; "absent" or "folder" otherwise."""
    if path.is_file():
        return hashlib.sha1(path.read_bytes()).hexdigest()
    return "folder" if path.is_dir() else "absent"


def run_folders() -> dict[str, int]:
    """{path: mtime} of the run folders' entries (outputs/, ...) down to RUN_DEPTH."""
    found = {}
    for top in RUN_FOLDERS:
        level = [REPO / top] if (REPO / top).exists() else []
        for _ in range(RUN_DEPTH + 1):
            found.update({str(p.relative_to(REPO)): p.stat().st_mtime_ns for p in level})
            level = [c for p in level if p.is_dir() for c in p.iterdir()]
    return found


def git_files() -> dict[str, str]:
    """{path: fingerprint} of every file `git status` lists. Cheap: git's stat cache and
    the hashes of the few files that differ from HEAD."""
    return {path: _fingerprint(REPO / path) for path in _git_dirty()}


def _changed(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = (run_folders(), git_files())


def pytest_sessionfinish(session):
    """Compare the repository with its state at the start: a new or changed run folder
    fails the run; so does a changed file under CI (a fresh clone nobody edits), while in a
    working copy, where people edit files as the tests run, it is a warning."""
    if _BEFORE not in session.config.stash:  # this conftest was loaded after the start
        return
    (runs, files), strict = session.config.stash[_BEFORE], bool(os.environ.get("CI"))
    changed = (_changed(runs, run_folders()), _changed(files, git_files()))
    session.config.stash[_CHANGED] = changed
    if changed[0] or (strict and changed[1]):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    runs, files = config.stash.get(_CHANGED, ([], []))
    report = terminalreporter
    if runs:
        report.section("the tests wrote run folders into the repository", red=True)
        report.line("Tests must write under tmp_path (CLI runs too: the run_env fixture):")
        report.line("\n".join(f"  {path}" for path in runs))
    if files:
        report.section("files of the repository changed while the tests ran", yellow=True)
        report.line("By a test (it must write under tmp_path), or by an edit meanwhile:")
        report.line("\n".join(f"  {path}" for path in files))


# Test modules of seconds per test, left out of `make test-fast` (marked `integration`):
# model families trained end to end, every preset built, DDP and SLURM launches, console
# scripts started by module fixtures. Paths relative to tests/; a folder ends in "/".
INTEGRATION = (
    "models/",
    "slurm/",
    "ood/test_eval_ood.py",
    "report/test_report_errors.py",
    "test_benchmarks.py",
    "test_cli_errors.py",
    "test_configs.py",
    "test_eval_sample_quality.py",
    "test_loggers.py",
    "test_lr_schedule.py",
    "test_metric_kinds.py",
    "test_train_api.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    """Mark the tests that run the console scripts in subprocesses (the run_env fixture)
    `cli` and those of the INTEGRATION modules `integration`."""
    for item in items:
        if "run_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cli)
        path = item.path
        relative = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""
        if relative.startswith(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def run_env(tmp_path):
    """Environment for subprocess runs of the CLI: tests/ importable, and paths.root_dir
    (GMLAB_ROOT) at tmp_path, so that a run without hydra.run.dir writes its folder under
    tmp_path/outputs (conf/ is found beside the installed code, not through GMLAB_ROOT)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["GMLAB_ROOT"] = str(tmp_path)
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
