"""The DataModule every gmlab dataset builds on: decode once, hold uint8 tensors (in memory
or memory-mapped), batch by indexing."""

from __future__ import annotations

import abc
from pathlib import Path

import lightning as L
import torch

from gmlab.data.loader import IndexBatchLoader
from gmlab.data.split import Split
from gmlab.errors import ShapeError


class InMemoryDataModule(L.LightningDataModule, abc.ABC):
    """Train/val/test splits as tensors (in memory or file mappings), batched by indexing.

    Subclasses implement `load_splits()`, returning raw `(x, y)` tensor pairs (or
    `Split`s) for "train" and "test" (x: uint8 [N, C, H, W] images or float [N, d]
    points; y: int64 [N]). The validation split is carved from train with a fixed seed,
    unless `load_splits()` also returns a "val" pair (a dataset's official validation
    split, e.g. CelebA's), which is then used as it is and `val_size` is ignored. Carved
    splits are index arrays into train's tensors (`Split`): nothing is copied, so a
    memory-mapped train set stays on disk.

    Args:
        root: folder holding the dataset files (torchvision's layout).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (defaults to batch_size).
        val_size: number (>= 1) or fraction (< 1) of training samples held out.
        split_seed: seed of the train/val split.
        shape: expected shape of one sample, e.g. [1, 28, 28]; checked after loading.
        num_classes: number of label classes.
        download: let torchvision download missing files (needs a network).
        limit: keep only the first `limit` samples of each split (quick runs, tests).
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: float = 0.1,
        split_seed: int = 0,
        shape: list[int] | tuple[int, ...] = (),
        num_classes: int = 10,
        download: bool = False,
        limit: int | None = None,
        num_levels: int | None = 256,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.shape = tuple(shape)
        self.num_classes = num_classes
        self.download = download
        self.limit = limit
        self.num_levels = num_levels  # levels of the raw values; None: continuous (points)
        self.splits: dict[str, Split] = {}

    @abc.abstractmethod
    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor] | Split]:
        """Return {"train": (x, y), "test": (x, y)} as raw tensors (or `Split`s)."""

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = {
            name: part if isinstance(part, Split) else Split(*part)
            for name, part in self.load_splits().items()
        }
        if "val" in raw:
            splits = {"train": raw["train"], "val": raw["val"], "test": raw["test"]}
        else:
            train = raw["train"]
            n_val = self.val_size if self.val_size >= 1 else round(self.val_size * len(train))
            n_val = int(n_val)
            if not 0 <= n_val < len(train):
                raise ShapeError(
                    f"{type(self).__name__}: data.val_size={self.val_size} leaves no training "
                    f"samples (train has {len(train)})"
                )
            perm = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(self.split_seed)
            )
            val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
            splits = {
                "train": train.subset(train_idx) if n_val else train,
                "val": train.subset(val_idx),
                "test": raw["test"],
            }
        for name, split in splits.items():
            if self.shape and split.sample_shape != self.shape:
                raise ShapeError(
                    f"{type(self).__name__}: {name} samples have shape {split.sample_shape}, "
                    f"the config says data.shape={list(self.shape)}"
                )
            if self.limit is not None:
                splits[name] = split.head(self.limit)
        self.splits = splits

    # ------------------------------------------------------------ dataloaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, train: bool) -> IndexBatchLoader:
        self.setup()
        data = self.splits[split]
        rank, world = self._world()
        return IndexBatchLoader(
            data.x,
            data.y,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=False,
            seed=self.split_seed + 1,
            rank=rank,
            world_size=world,
            index=data.index,
            mapped=data.mapped,
        )

    def train_dataloader(self) -> IndexBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> IndexBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> IndexBatchLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> IndexBatchLoader:
        return self._loader("test", train=False)

    # ----------------------------------------------------------------- access
    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The raw (x, y) tensors of one split ("train", "val" or "test"): views of a
        memory-mapped cache where the split is a whole file, an in-memory copy of its rows
        where it was carved from train (`split_data` keeps them as index arrays)."""
        self.setup()
        return self.splits[split].tensors()

    def split_data(self, split: str = "train") -> Split:
        """One split as index arrays into its (possibly memory-mapped) tensors: no copy."""
        self.setup()
        return self.splits[split]
