"""CIFAR-10 from torchvision's pickled batches (`<root>/cifar-10-batches-py/`)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torchvision import datasets

from gmlab.data.cached import CachedDataModule


class _CIFAR10(datasets.CIFAR10):
    """torchvision's reader, checking that files exist instead of their md5 sums (the
    structure is checked on reading; torchvision still checks md5 sums on download)."""

    def _check_integrity(self) -> bool:
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, n)) for n in names)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10DataModule(CachedDataModule):
    """CIFAR-10: 50k train / 10k test RGB 32x32 images, uint8 [N, 3, 32, 32], labels 0..9.

    Read by `torchvision.datasets.CIFAR10(root)` from `<root>/cifar-10-batches-py/`
    (data_batch_1..5, test_batch, batches.meta); `download=True` fetches and unpacks them.
    """

    name = "CIFAR-10"
    reader = _CIFAR10

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("shape", (3, 32, 32))
        super().__init__(**kwargs)

    @property
    def raw_dir(self) -> Path:
        return self.root / self.reader.base_folder

    def raw_files(self, split: str) -> list[Path]:
        batches = self.reader.train_list if split == "train" else self.reader.test_list
        names = [name for name, _ in batches] + [self.reader.meta["filename"]]
        return [self.raw_dir / name for name in names]

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.reader(str(self.root), train=split == "train", download=False)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # torchvision holds NHWC
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    def fetch(self) -> None:
        self.reader(str(self.root), train=True, download=True)

    def find_bad_file(self, split: str) -> tuple[Path, str] | None:
        for path in self.raw_files(split):
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
            except Exception as exc:  # noqa: BLE001 - this is the diagnosis
                return path, f"{type(exc).__name__}: {exc}"
            if path.name == self.reader.meta["filename"]:
                if not isinstance(entry, dict) or self.reader.meta["key"] not in entry:
                    return path, f"no {self.reader.meta['key']!r} entry"
                continue
            data = entry.get("data") if isinstance(entry, dict) else None
            labels = entry.get("labels") if isinstance(entry, dict) else None
            if data is None or labels is None:
                return path, "not a dict with 'data' and 'labels'"
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
                return path, f"data {data.shape} with {len(labels)} labels, expected [N, 3072]"
        return None
