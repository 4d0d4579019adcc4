"""Lightning callbacks: atomic best/last checkpoints, image grids, per-epoch seeding,
a logging interval that fits short epochs."""

from gmlab.callbacks.checkpointing import Checkpoint
from gmlab.callbacks.images import ImageGrids
from gmlab.callbacks.logging_interval import LogEveryEpoch
from gmlab.callbacks.seeding import EpochSeed

__all__ = ["Checkpoint", "EpochSeed", "ImageGrids", "LogEveryEpoch"]
