"""2-D point sets for density models you can look at: float32 [N, 2] points.

Every set is drawn from a `torch.Generator` seeded by `seed`, so a (dataset, size, seed)
triple gives the same points on every machine. Labels are the mixture component (or
moon, or pinwheel arm) a point was drawn from, 0 where there is none.

- gauss1, gauss2: the two Gaussians of the 2-D VAE seed (CS294-158's VAE homework):
  mean (1, 2); gauss1 has covariance diag(25, 1) (axis-aligned, std 5 and 1); gauss2 is
  the same rotated by 45 degrees, covariance [[13, 12], [12, 13]]. A VAE with a
  diagonal decoder can fit gauss1 with its decoder noise alone, gauss2 only through z.
- moons: two interleaved half circles (radius 1, noise std 0.1), scaled by 2 and
  shifted by (-1, -0.2) to centre them (as in FFJORD's toy data).
- 8gaussians: 8 Gaussians, std 0.5 / sqrt(2), centres on the circle of radius
  4 / sqrt(2) at angles 0, 45, ..., 315 degrees.
- checkerboard: uniform on the 8 squares (side 2) of a 4x4 board on [-4, 4]^2 whose
  floor(x / 2) + floor(y / 2) is even.
- pinwheel: 5 arms; radial std 0.3, tangential std 0.1, rate 0.25 (FFJORD's pinwheel).
"""

from __future__ import annotations

import math

import torch

from gmlab.data.base import InMemoryDataModule
from gmlab.errors import GmlabError

C45 = math.sqrt(0.5)
ROT45 = torch.tensor([[C45, -C45], [C45, C45]], dtype=torch.float64)
GAUSSIANS = {
    "gauss1": (torch.tensor([1.0, 2.0]), torch.diag(torch.tensor([25.0, 1.0]))),
    "gauss2": (
        torch.tensor([1.0, 2.0]),
        (ROT45 @ torch.diag(torch.tensor([25.0, 1.0], dtype=torch.float64)) @ ROT45.T).float(),
    ),
}
NUM_CLASSES = {
    "gauss1": 1,
    "gauss2": 1,
    "moons": 2,
    "8gaussians": 8,
    "checkerboard": 1,
    "pinwheel": 5,
}
DATASETS = tuple(NUM_CLASSES)


def _gauss(name: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mean, cov = GAUSSIANS[name]
    z = torch.randn(n, 2, generator=g)
    return mean + z @ torch.linalg.cholesky(cov).T, torch.zeros(n, dtype=torch.int64)


def _moons(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.randint(0, 2, (n,), generator=g)
    t = torch.rand(n, generator=g) * math.pi
    outer = torch.stack([torch.cos(t), torch.sin(t)], 1)
    inner = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(label[:, None] == 0, outer, inner) + 0.1 * torch.randn(n, 2, generator=g)
    return 2.0 * x + torch.tensor([-1.0, -0.2]), label


def _eight_gaussians(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.randint(0, 8, (n,), generator=g)
    angle = label.double() * (2 * math.pi / 8)
    centres = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], 1).float()
    return (centres + 0.5 * torch.randn(n, 2, generator=g)) * C45, label


def _checkerboard(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(0, 2, (n,), generator=g)
    x2 = x2 + torch.floor(x1) % 2
    return 2.0 * torch.stack([x1, x2], 1), torch.zeros(n, dtype=torch.int64)


def _pinwheel(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    label = torch.randint(0, arms, (n,), generator=g)
    f = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    f[:, 0] += 1.0
    angle = label * (2 * math.pi / arms) + rate * torch.exp(f[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = torch.stack([f[:, 0] * cos - f[:, 1] * sin, f[:, 0] * sin + f[:, 1] * cos], 1)
    return 2.0 * x, label


def sample_toy2d(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` points (float32 [n, 2]) and their component labels (int64 [n]) of set `name`."""
    if name not in NUM_CLASSES:
        raise GmlabError(f"data.dataset={name!r} is not a toy2d set; choose one of {DATASETS}")
    g = torch.Generator().manual_seed(seed)
    if name in GAUSSIANS:
        x, y = _gauss(name, n, g)
    else:
        draw = {
            "moons": _moons,
            "8gaussians": _eight_gaussians,
            "checkerboard": _checkerboard,
            "pinwheel": _pinwheel,
        }[name]
        x, y = draw(n, g)
    return x.float().contiguous(), y


class Toy2DDataModule(InMemoryDataModule):
    """A 2-D point set (see the module docstring): float32 [N, 2], seeded.

    Args (besides InMemoryDataModule's; `root` and `download` are unused):
        dataset: one of gauss1, gauss2, moons, 8gaussians, checkerboard, pinwheel.
        train_size: points drawn for train (val is carved from them).
        test_size: points drawn for test, from an independent stream.
        seed: train uses generator seed 2*seed, test 2*seed + 1.
    """

    def __init__(
        self,
        dataset: str = "moons",
        train_size: int = 80_000,
        test_size: int = 20_000,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if dataset not in NUM_CLASSES:
            raise GmlabError(
                f"data.dataset={dataset!r} is not a toy2d set; choose one of {DATASETS}"
            )
        kwargs.setdefault("shape", (2,))
        kwargs["num_levels"] = None  # real-valued points, not pixels
        if kwargs.get("num_classes") is None:
            kwargs["num_classes"] = NUM_CLASSES[dataset]
        super().__init__(**kwargs)
        self.dataset = dataset
        self.train_size = train_size
        self.test_size = test_size
        self.seed = seed

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            "train": sample_toy2d(self.dataset, self.train_size, 2 * self.seed),
            "test": sample_toy2d(self.dataset, self.test_size, 2 * self.seed + 1),
        }
