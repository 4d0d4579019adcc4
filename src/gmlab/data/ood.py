"""Datasets that need no download, built for out-of-distribution tests (usable as `data=`):

* `Digits28DataModule`: scikit-learn's bundled 8x8 digits resized like MNIST was made;
* `TransformedDataModule`: any other DataModule with a fixed pixel transform
  (inverted, flipped, rotated);
* `NoiseDataModule`, `ConstantDataModule`: uniform-noise and constant images of any
  shape (`gmlab-eval ... ood=` gives them the model's shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import get_class

from gmlab.data.base import InMemoryDataModule
from gmlab.data.digits import DigitsDataModule
from gmlab.errors import ConfigError

TRANSFORMS = {
    "invert": lambda x, top: top - x,
    "hflip": lambda x, top: x.flip(-1),
    "vflip": lambda x, top: x.flip(-2),
    "rot90": lambda x, top: x.rot90(1, dims=(-2, -1)),
    "rot180": lambda x, top: x.rot90(2, dims=(-2, -1)),
}


def resize_box(x: torch.Tensor, size: int, box: int) -> torch.Tensor:
    """uint8 [N, C, h, w] -> [N, C, size, size]: resized to box x box (bilinear, antialiased)
    and centred in a blank size x size frame."""
    if not 1 <= box <= size:
        raise ConfigError(f"data.box must be in 1..data.size={size}, got {box}")
    small = F.interpolate(x.float(), size=(box, box), mode="bilinear", antialias=True)
    out = torch.zeros(*x.shape[:2], size, size)
    lo = (size - box) // 2
    out[..., lo : lo + box, lo : lo + box] = small
    return out.round().clamp(0, 255).to(torch.uint8)


class Digits28DataModule(DigitsDataModule):
    """The bundled digits as MNIST-sized images: uint8 [N, 1, size, size].

    MNIST's digits were size-normalised into a 20x20 box and centred in 28x28; the 8x8
    digits (0..16 mapped to 0..255) are resized to `box` x `box` and centred the same way.
    Splits as `DigitsDataModule`'s.
    """

    def __init__(self, size: int = 28, box: int = 20, **kwargs) -> None:
        kwargs.setdefault("shape", (1, size, size))
        super().__init__(**kwargs)
        self.size, self.box = size, box

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            split: (resize_box(x, self.size, self.box), y)
            for split, (x, y) in super().load_splits().items()
        }


class TransformedDataModule(InMemoryDataModule):
    """Another DataModule's splits under one pixel transform (the same for every split).

    Args:
        dataset: class path of the DataModule transformed, e.g. gmlab.data.MNISTDataModule;
            every other keyword argument goes to it.
        transform: one of `TRANSFORMS`: invert (levels - 1 - x), hflip, vflip, rot90, rot180.
    """

    def __init__(self, dataset: str, transform: str, **kwargs) -> None:
        if transform not in TRANSFORMS:
            raise ConfigError(
                f"data.transform must be one of {sorted(TRANSFORMS)}, got {transform!r}"
            )
        self.inner = get_class(dataset)(**kwargs)
        self.transform = transform
        shape = tuple(self.inner.shape)
        if shape:
            shape = tuple(self._apply(torch.zeros(1, *shape, dtype=torch.uint8)).shape[1:])
        super().__init__(
            root=str(self.inner.root),
            batch_size=self.inner.batch_size,
            eval_batch_size=self.inner.eval_batch_size,
            shape=shape,
            num_classes=self.inner.num_classes,
            num_levels=self.inner.num_levels,
        )

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        top = (self.inner.num_levels or 256) - 1
        return TRANSFORMS[self.transform](x, top).contiguous()

    def prepare_data(self) -> None:
        self.inner.prepare_data()

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        splits = {}
        for split in ("train", "val", "test"):
            x, y = self.inner.tensors(split)
            splits[split] = (self._apply(x), y.clone())
        self.inner.splits = {}  # this module keeps the transformed copies
        return splits


class _SyntheticDataModule(InMemoryDataModule):
    """Seeded synthetic images of a given shape, labels 0 (train/test drawn apart)."""

    def __init__(
        self,
        shape=(1, 28, 28),
        train_size: int = 2000,
        test_size: int = 1000,
        seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_classes", 1)
        super().__init__(shape=tuple(shape), **kwargs)
        if not (self.num_levels and 2 <= self.num_levels <= 256):
            raise ConfigError(f"data.num_levels must be 2..256 for images, got {self.num_levels}")
        self.train_size, self.test_size, self.seed = train_size, test_size, seed

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for offset, (split, n) in enumerate((("train", self.train_size), ("test", self.test_size))):
            gen = torch.Generator().manual_seed(2 * self.seed + offset)
            out[split] = (self.draw(n, gen), torch.zeros(n, dtype=torch.long))
        return out


class NoiseDataModule(_SyntheticDataModule):
    """Every pixel uniform on 0..num_levels-1, independently: uint8 [N, *shape]."""

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.randint(0, self.num_levels, (n, *self.shape), generator=gen)
        return x.to(torch.uint8)


class ConstantDataModule(_SyntheticDataModule):
    """Images of one value each, the value uniform on 0..num_levels-1: uint8 [N, *shape]."""

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        value = torch.randint(0, self.num_levels, (n,), generator=gen).to(torch.uint8)
        return value.view(n, *[1] * len(self.shape)).expand(n, *self.shape).contiguous()
