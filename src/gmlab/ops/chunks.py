"""Rows per chunk of a batched computation: gmlab's work-memory budgets, in one place."""

from __future__ import annotations

import torch

# elements of one chunk's work tensors (64 MiB in float32): mixture log-densities, E-steps
WORK_BUDGET = 2**24
# elements of one k-means distance chunk, rows x (k + d): cache-sized on CPUs (larger chunks
# spill the element-wise work to main memory and run slower), large on GPUs
DISTANCE_BUDGET = {"cpu": 2**20, "gpu": 2**25}


def chunk_rows(n: int, width: int, budget: int = WORK_BUDGET) -> int:
    """Rows per chunk, 1..n, so that a [rows, width] work tensor holds <= `budget` elements."""
    return max(1, min(n, budget // max(width, 1)))


def distance_budget(device: torch.device) -> int:
    """The k-means distance budget of `device`."""
    return DISTANCE_BUDGET["cpu" if device.type == "cpu" else "gpu"]


def batched(fn, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """fn over x in batches on `device`, concatenated on the CPU (no gradients)."""
    with torch.no_grad():
        parts = [
            fn(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
        ]
    return torch.cat(parts)
