"""The README runs as written: each of its `bash` and `python` blocks, verbatim, in a fresh
shell, from a temporary copy of the repository, on the bundled digits. Blocks that need a
GPU, SLURM, a download or real datasets carry a skip mark with the reason in the Markdown
(`<!--pytest.mark.skip(reason="...")-->`). In docs/*.md only blocks marked
`<!--pytest.mark.cheap-->` run.

The blocks are parsed by pytest-codeblocks (its Markdown markers), and run here rather than
by its own runner, which executes shell blocks in pytest's working directory: the README's
commands write `outputs/`, and the suite must never write into the user's checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pytest_codeblocks import extract_from_file

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"""pytest\.mark\.skip\(reason=["'](.+)["']\)""")
SHELLS = ("bash", "sh")


def blocks(path: Path, run_unmarked: bool) -> list:
    """pytest params (path, block) of the runnable blocks in `path`, skip marks applied."""
    params = []
    for block in extract_from_file(path):
        if block.syntax not in (*SHELLS, "python"):
            continue
        marks = " ".join(block.marks)
        name = f"{path.relative_to(REPO)}:{block.lineno}"
        skip = SKIP.search(marks)
        if skip:
            params.append(pytest.param(block, id=name, marks=pytest.mark.skip(skip.group(1))))
        elif run_unmarked or "pytest.mark.cheap" in marks:
            params.append(pytest.param(block, id=name))
    return params


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> tuple[Path, dict]:
    """(a copy of the tracked files, the environment of a fresh shell there). The copy
    shares this checkout's .venv; its pyproject.toml is made older than the venv's install
    stamp, so `make` sees the venv up to date and never reinstalls into it."""
    root = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    stamp = REPO / ".venv" / ".gmlab-installed"
    if stamp.exists():
        old = stamp.stat().st_mtime - 60
        os.utime(root / "pyproject.toml", (old, old))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GMLAB_", "PYTEST"))}
    env.update(GMLAB_ROOT=str(root), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    return root, env


def run_block(block, checkout) -> None:
    root, env = checkout
    if block.syntax in SHELLS:
        command = ["bash", "-eo", "pipefail", "-c", block.code]
        if "source .venv/bin/activate" not in block.code:  # a fresh shell, activated
            command[-1] = f"source .venv/bin/activate\n{block.code}"
    else:
        command = [str(root / ".venv" / "bin" / "python"), "-c", block.code]
    out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks(REPO / "README.md", run_unmarked=True))
def test_readme_block_runs_as_written(block, checkout):
    run_block(block, checkout)


DOCS = [b for page in sorted((REPO / "docs").glob("*.md")) for b in blocks(page, False)]


@pytest.mark.slow
@pytest.mark.parametrize("block", DOCS or [pytest.param(None, marks=pytest.mark.skip("none"))])
def test_cheap_docs_block_runs_as_written(block, checkout):
    run_block(block, checkout)


def test_every_readme_block_is_run_or_skipped_with_a_reason():
    """A block in a language this runner does not know would silently go untested."""
    for block in extract_from_file(REPO / "README.md"):
        assert block.syntax in (*SHELLS, "python", ""), f"README.md:{block.lineno}"
