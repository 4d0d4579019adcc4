"""Batches by indexing one tensor (in memory or a file mapping): no per-sample Python, no
worker processes."""

from __future__ import annotations

import math

import torch

from gmlab.data.split import Split


class EpochCounter:
    """Holds the epoch that picks the shuffling permutation.

    Exposed as the loader's `sampler` so that Lightning's fit loop calls `set_epoch`
    with the trainer's current epoch, also after resuming from a checkpoint.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class IndexBatchLoader:
    """Iterate over (x[idx], y[idx]) batches of one split's tensors.

    A sized iterable that Lightning accepts as a dataloader. Shuffling uses a generator
    seeded by (seed, epoch), so every epoch's order is reproducible, also after a resume.
    Under multi-process training each rank takes every `world_size`-th sample of the same
    permutation, padded by wrap-around to a multiple of `world_size` (as
    `torch.utils.data.DistributedSampler` does): ranks get equal batch counts, so DDP
    stays in step, and at most world_size - 1 samples are seen twice per epoch. A batch
    holds the shuffled samples in ascending row order: it reads forward through memory or
    a file mapping, in one gather.

    Stateful: `state_dict()` says how far the current epoch went ({"epoch", "batches"
    yielded}) and Lightning stores it in every checkpoint; after `load_state_dict()` the
    next iteration of that epoch continues with the batch after the last one yielded, in
    the same permutation, so a run resumed from a mid-epoch `last.ckpt` trains on exactly
    the batches an uninterrupted run would. Lightning's fetcher does not read ahead of a
    sized loader, so "yielded" is "trained" when a checkpoint is written after a step.

    Args:
        x: [N, ...] data (uint8 images or float points; in memory or a file mapping).
        y: [N] labels (int64).
        batch_size: samples per batch.
        shuffle: draw a new permutation every epoch.
        drop_last: drop the final incomplete batch.
        seed: base seed of the shuffling generator.
        rank, world_size: this process's share under distributed training.
        index: the split's rows of x and y (ascending; default all), see `Split`.
        mapped: x is a file mapping (kept in `split`, see `Split`).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        index: torch.Tensor | None = None,
        mapped: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = Split(x, y, index, mapped)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.sampler = EpochCounter()
        self.batch_sampler = None  # read by Lightning's loader inspection
        self._position: dict[str, int] | None = None  # {"epoch", "batches"} of the iteration
        self._resume: dict[str, int] | None = None

    def _per_rank_samples(self) -> int:
        return math.ceil(len(self.split) / self.world_size)

    def __len__(self) -> int:
        m = self._per_rank_samples()
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """{"epoch": e, "batches": b}: the last iteration was of epoch e and yielded b batches
        ({"epoch": -1, "batches": 0} before the first)."""
        return dict(self._position or {"epoch": -1, "batches": 0})

    def load_state_dict(self, state: dict) -> None:
        """Make the next iteration, if it is of epoch `state["epoch"]`, skip the batches
        that epoch already yielded; an iteration of another epoch starts at batch 0."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self):
        epoch, resume, self._resume = self.sampler.epoch, self._resume, None
        start = resume["batches"] if resume and resume["epoch"] == epoch else 0
        self._position = {"epoch": epoch, "batches": start}
        n = len(self.split)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        padded = self._per_rank_samples() * self.world_size
        if padded > n:
            order = order.repeat(math.ceil(padded / n))[:padded]
        rows = self.split.rows(order[self.rank :: self.world_size].contiguous())
        rows = _ascending_within_batches(rows, self.batch_size)
        labels = self.split.y.index_select(0, rows)  # the epoch's labels in one gather
        x, size = self.split.x, self.batch_size
        for i in range(start, len(self)):
            batch = slice(i * size, (i + 1) * size)
            self._position["batches"] = i + 1
            yield x.index_select(0, rows[batch]), labels[batch]


def _ascending_within_batches(rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """rows [M] with each run of `batch_size` (one batch) sorted: a batch reads its rows
    forward through memory or a file mapping, and holds the same samples as unsorted."""
    full = len(rows) // batch_size * batch_size
    head = rows[:full].view(-1, batch_size).sort(dim=1).values.reshape(-1)
    return torch.cat([head, rows[full:].sort().values])
