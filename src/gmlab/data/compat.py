"""The decoded-data cache files of gmlab 0.1: one `torch.save` file per split
(`<cache>.pt`, read whole into memory), which `CachedDataModule` converts once into today's
memory-mapped file and then deletes. Kept so that a cache whose raw files are gone still
loads and no stale copy is left on disk.

Removal: delete this module and its one use in `gmlab.data.cached` (and the test of the
conversion) when gmlab 0.3 is released; a cache of gmlab 0.1 is then decoded again from its
raw files, and the old file can be deleted by hand.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gmlab.data.mapped import CacheFileError


def old_cache_path(cache: Path) -> Path:
    """Where gmlab 0.1 kept the cache that is `cache` today."""
    return cache.with_suffix(".pt")


def read_torch_save(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x [N, ...], y [N], meta with `format` and `sources`) of a gmlab 0.1 cache file, as
    `gmlab.data.mapped.read_mapped` returns them; `CacheFileError` when it is unreadable."""
    try:
        blob = torch.load(path, weights_only=True)
        return blob["x"], blob["y"], blob
    except Exception as exc:  # noqa: BLE001 - a bad cache is rebuilt, never fatal
        raise CacheFileError(f"{type(exc).__name__}: {exc}") from exc
