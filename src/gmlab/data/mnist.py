"""MNIST and Fashion-MNIST from torchvision's raw IDX files (`<root>/MNIST/raw/`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision import datasets

from gmlab.data.cached import CachedDataModule, corrupt_file_error
from gmlab.errors import DataNotFoundError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def check_idx(path: Path, ndim: int, dataset: str) -> tuple[int, ...]:
    """Dimensions from a uint8 IDX header, after checking the file holds exactly that much.

    IDX: 4-byte magic 0x0000 08 <ndim>, then ndim big-endian uint32 sizes, then the data.
    """
    header_size = 4 * (ndim + 1)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_size)

    def bad(why: str) -> DataNotFoundError:
        return corrupt_file_error(dataset, path, why)

    if len(header) < header_size:
        raise bad(f"{size} bytes, too short for an IDX header")
    magic = int.from_bytes(header[:4], "big")
    if magic != 0x0800 + ndim:
        raise bad(f"magic number {magic:#010x}, expected {0x0800 + ndim:#010x}")
    dims = tuple(int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(1, ndim + 1))
    expected = header_size + math.prod(dims)
    if size != expected:
        shape = " x ".join(map(str, dims))
        raise bad(f"its header says {shape} bytes of data, {expected} in all, the file has {size}")
    return dims


class MNISTDataModule(CachedDataModule):
    """MNIST: 60k train / 10k test grey 28x28 digits, uint8 [N, 1, 28, 28], labels 0..9.

    Read by `torchvision.datasets.MNIST(root)` from `<root>/MNIST/raw/` (uncompressed IDX
    files); `download=True` fetches them. The validation split is carved from train.
    """

    name = "MNIST"
    reader = datasets.MNIST

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("shape", (1, 28, 28))
        super().__init__(**kwargs)

    @property
    def raw_dir(self) -> Path:
        return self.root / self.reader.__name__ / "raw"

    def raw_files(self, split: str) -> list[Path]:
        return [self.raw_dir / name for name in IDX_FILES[split]]

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.raw_files(split)
        n_images = check_idx(images, 3, self.name)[0]
        n_labels = check_idx(labels, 1, self.name)[0]
        if n_images != n_labels:
            raise DataNotFoundError(
                f"{self.name} files {images.resolve()} and {labels.name} do not match: "
                f"{n_images} images but {n_labels} labels. Replace them with a good copy "
                f"(data.download=true after deleting them)."
            )
        ds = self.reader(str(self.root), train=split == "train", download=False)
        return ds.data.unsqueeze(1), ds.targets

    def fetch(self) -> None:
        self.reader(str(self.root), train=True, download=True)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 60k/10k grey 28x28 clothing images, from `<root>/FashionMNIST/raw/`."""

    name = "FashionMNIST"
    reader = datasets.FashionMNIST
