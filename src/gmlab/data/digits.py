"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no download."""

from __future__ import annotations

import torch

from gmlab.data.base import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """1797 8x8 grey images, values 0..16 mapped to 0..255 (uint8 [N, 1, 8, 8]).

    A fixed, seeded split: `test_size` images for test, the rest for train/val.
    """

    def __init__(self, test_size: int = 297, **kwargs) -> None:
        kwargs.setdefault("shape", (1, 8, 8))
        super().__init__(**kwargs)
        self.test_size = test_size

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).float()
        x = torch.round(x * 255.0 / 16.0).to(torch.uint8).unsqueeze(1)
        y = torch.from_numpy(bunch.target).long()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(20240601))
        test, train = perm[: self.test_size].sort().values, perm[self.test_size :].sort().values
        return {"train": (x[train], y[train]), "test": (x[test], y[test])}
