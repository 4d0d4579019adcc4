"""SVHN (cropped digits) from torchvision's .mat files (`<root>/{train,test,extra}_32x32.mat`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import datasets

from gmlab.data.cached import CachedDataModule


class _SVHN(datasets.SVHN):
    """torchvision's reader, checking that the file exists instead of its md5 sum (the
    structure is checked on reading; torchvision still checks md5 sums on download)."""

    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class SVHNDataModule(CachedDataModule):
    """SVHN: 73,257 train / 26,032 test RGB 32x32 digits, uint8 [N, 3, 32, 32], labels
    0..9 (the files' label 10 is digit 0, as torchvision maps it).

    Read by `torchvision.datasets.SVHN(root)`, which keeps the files directly in `root`
    (train_32x32.mat, test_32x32.mat, and extra_32x32.mat when `extra=True` appends the
    531,131 extra images to train); `download=True` fetches them.
    """

    name = "SVHN"
    reader = _SVHN

    def __init__(self, extra: bool = False, **kwargs) -> None:
        kwargs.setdefault("shape", (3, 32, 32))
        super().__init__(**kwargs)
        self.extra = extra

    @property
    def raw_dir(self) -> Path:
        return self.root

    @property
    def cache_key(self) -> str:
        return "svhn"

    def _parts(self, split: str) -> list[str]:
        return ["train", "extra"] if split == "train" and self.extra else [split]

    def raw_files(self, split: str) -> list[Path]:
        return [self.raw_dir / self.reader.split_list[part][1] for part in self._parts(split)]

    def cache_path(self, split: str) -> Path:
        return super().cache_path("+".join(self._parts(split)))

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for part in self._parts(split):
            ds = self.reader(str(self.root), split=part, download=False)
            xs.append(torch.from_numpy(ds.data))
            ys.append(torch.from_numpy(ds.labels).reshape(-1))
        return torch.cat(xs), torch.cat(ys)

    def fetch(self) -> None:
        for split in self.split_names:
            for part in self._parts(split):
                if not (self.raw_dir / self.reader.split_list[part][1]).exists():
                    self.reader(str(self.root), split=part, download=True)

    def find_bad_file(self, split: str) -> tuple[Path, str] | None:
        import scipy.io

        for path in self.raw_files(split):
            try:
                mat = scipy.io.loadmat(path, variable_names=["X", "y"])
                x, y = mat["X"], mat["y"]
            except Exception as exc:  # noqa: BLE001 - this is the diagnosis
                return path, f"{type(exc).__name__}: {exc}"
            if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
                return path, f"X {x.shape} and y {y.shape}, expected X [32, 32, 3, N], y [N, 1]"
        return None
