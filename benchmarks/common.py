"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeats` calls after `warmup` calls (min filters noise
    from other processes on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cuda_synced(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` followed by a wait for the GPU, so that timers see the kernels' end."""

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """`fn` as it is on the CPU; on a GPU, followed by a wait for its kernels."""
    return fn if device == "cpu" else cuda_synced(fn)


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """The machine's own dense matmul rate (GFLOP/s) for an n x n x n product."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    return 2 * n**3 / best_time(synced(lambda: a @ b, device), repeats=5, warmup=2) / 1e9


def machine() -> str:
    """One line naming the hardware the figures were measured on."""
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads (torch {torch.__version__})"
    )


def step_timing_trainer(callback, accelerator: str = "cpu", **options):
    """A quiet one-epoch Lightning Trainer for timing training steps: no validation,
    logging, checkpoints, progress bar or start-up messages; `callback` records the step
    times."""
    import logging

    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
        **options,
    )
