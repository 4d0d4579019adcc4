"""DataModules (decode once, batch by indexing) and per-batch preprocessing."""

from gmlab.data.base import InMemoryDataModule
from gmlab.data.digits import DigitsDataModule
from gmlab.data.loader import IndexBatchLoader
from gmlab.data.preprocess import Preprocessor

__all__ = ["DigitsDataModule", "InMemoryDataModule", "IndexBatchLoader", "Preprocessor"]
