"""Lightning callbacks: atomic best/last checkpoints, image grids, per-epoch seeding."""

from gmlab.callbacks.checkpoint import Checkpoint
from gmlab.callbacks.images import ImageGrids
from gmlab.callbacks.seeding import EpochSeed

__all__ = ["Checkpoint", "EpochSeed", "ImageGrids"]
