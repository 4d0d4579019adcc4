"""Where a run came from: git commit, package versions, device, wall-clock times."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def now_iso() -> str:
    """The current UTC time, ISO-8601 with an explicit offset (e.g. 2026-01-31T12:00:00+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def iso_seconds(stamp: str) -> float:
    """POSIX seconds of an ISO-8601 time written by `now_iso`."""
    return datetime.fromisoformat(stamp).timestamp()


def git_info(root: Path) -> dict:
    """{"commit": sha, "dirty": bool} of the git work tree at `root`; nulls when `root` is
    not a git checkout or git is missing."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    """Installed versions of gmlab, torch (and the CUDA it was built for), lightning, hydra
    and Python."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    torch = sys.modules.get("torch")
    return {
        "gmlab": version("gmlab"),
        "torch": torch.__version__ if torch else version("torch"),
        "cuda": torch.version.cuda if torch else None,
        "lightning": version("lightning"),
        "hydra": version("hydra-core"),
        "python": platform.python_version(),
    }


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo on Linux, else the platform's word)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def device_info(accelerator: str, device_ids: list[int] | None = None) -> dict:
    """{"accelerator", "name", "count"} of the devices a run uses.

    accelerator: "cpu", "cuda", "mps", ... (Lightning's "gpu" means "cuda"); device_ids: the
    GPU indices in use (None: all visible). On the CPU, count is the number of usable cores.
    """
    accelerator = "cuda" if accelerator == "gpu" else accelerator
    if accelerator == "cuda" and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            ids = list(range(torch.cuda.device_count())) if device_ids is None else device_ids
            names = sorted({torch.cuda.get_device_name(i) for i in ids})
            return {"accelerator": "cuda", "name": ", ".join(names), "count": len(ids)}
    if accelerator == "cpu":
        return {"accelerator": "cpu", "name": cpu_name(), "count": usable_cpus()}
    count = len(device_ids) if device_ids is not None else None
    return {"accelerator": accelerator, "name": platform.machine(), "count": count}


def trainer_device(trainer) -> dict:
    """`device_info` of a built Lightning Trainer (its accelerator and device indices)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    if isinstance(trainer.accelerator, CUDAAccelerator):
        return device_info("cuda", list(trainer.device_ids))
    if isinstance(trainer.accelerator, CPUAccelerator):
        return device_info("cpu")
    name = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    return device_info(name, list(trainer.device_ids))
