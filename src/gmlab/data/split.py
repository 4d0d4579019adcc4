"""One split of a dataset: rows of sample tensors (often a memory-mapped file), no copy."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def gather_rows(x: torch.Tensor, rows: torch.Tensor, ascending: bool = False) -> torch.Tensor:
    """x[rows] for x [N, ...] and int64 rows [B], as one row copy each (`index_select`).

    `ascending` reads the rows in ascending order and then puts them back in the order
    asked for, so that reads of a file mapping run forward through the file."""
    if not ascending or len(rows) < 2:
        return x.index_select(0, rows)
    sorted_rows, order = rows.sort()
    return x.index_select(0, sorted_rows).index_select(0, order.argsort())


@dataclass(frozen=True)
class Split:
    """The samples x[index] and labels y[index] of one split, without copying them.

    Attributes:
        x: [N, ...] samples of the whole source (uint8 images or float points).
        y: [N] int64 labels.
        index: int64 [n] ascending rows of x and y in this split; None: all N rows.
        mapped: x is a file mapping: batches read their rows in ascending order.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None
    mapped: bool = False

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.x) if self.index is None else len(self.index)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """[B] rows of x and y holding the split's samples at `positions` (int64 in 0..len-1)."""
        return positions if self.index is None else self.index.index_select(0, positions)

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the split's samples at `positions` (int64 in 0..len-1), in that order."""
        rows = self.rows(positions)
        return gather_rows(self.x, rows, self.mapped), self.y.index_select(0, rows)

    def subset(self, positions: torch.Tensor) -> Split:
        """The split's samples at ascending `positions`, as index arrays (no copy)."""
        return Split(self.x, self.y, self.rows(positions), self.mapped)

    def head(self, n: int) -> Split:
        """The first n samples (views, or a shorter index)."""
        if self.index is None:
            return Split(self.x[:n], self.y[:n], None, self.mapped)
        return Split(self.x, self.y, self.index[:n], self.mapped)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (x, y): views of the source when the split is all of it (no
        copy; a mapping stays a mapping), else a gathered copy in memory."""
        if self.index is None:
            return self.x, self.y
        return self.x.index_select(0, self.index), self.y.index_select(0, self.index)
