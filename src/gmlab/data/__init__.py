"""DataModules (decode once, memory-map the cache, batch by indexing) and per-batch
preprocessing."""

from gmlab.data.base import InMemoryDataModule
from gmlab.data.cached import CachedDataModule
from gmlab.data.celeba import CelebADataModule
from gmlab.data.cifar import CIFAR10DataModule
from gmlab.data.digits import DigitsDataModule
from gmlab.data.loader import IndexBatchLoader
from gmlab.data.mnist import FashionMNISTDataModule, MNISTDataModule
from gmlab.data.preprocess import Preprocessor
from gmlab.data.split import Split
from gmlab.data.svhn import SVHNDataModule
from gmlab.data.toy2d import Toy2DDataModule

__all__ = [
    "CIFAR10DataModule",
    "CachedDataModule",
    "CelebADataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "IndexBatchLoader",
    "MNISTDataModule",
    "Preprocessor",
    "SVHNDataModule",
    "Split",
    "Toy2DDataModule",
]
