"""Precision / recall of k-NN manifolds (Kynkäänniemi et al. 2019) and density / coverage
(Naeem et al. 2020) between real features R [N, d] and fake features F [M, d].

r_k(x) is the distance from x to its k-th nearest neighbour in its own set (x itself is the
0-th), B(x, r) the closed ball. With k_pr for precision / recall and k_dc for density /
coverage (3 and 5 in the papers):

    precision = 1/M sum_j [ F_j in some B(R_i, r_kpr(R_i)) ]      fidelity: samples on the data
    recall    = 1/N sum_i [ R_i in some B(F_j, r_kpr(F_j)) ]      diversity: data the samples reach
    density   = 1/(k_dc M) sum_j sum_i [ F_j in B(R_i, r_kdc(R_i)) ]   ~1 for matching sets
    coverage  = 1/N sum_i [ some F_j in B(R_i, r_kdc(R_i)) ]

Distances are squared Euclidean, ||a||^2 + ||b||^2 - 2 a.b of features centred on the real
mean (less cancellation), in float32 by default (`dtype=torch.float64` for exact ties), and
computed chunk by chunk ([rows, N] at a time), so memory stays O(rows N), never O(N M).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gmlab.ops.chunks import chunk_rows

CHUNK_BUDGET = 2**22  # entries of one [rows, N] distance chunk (16 MiB in float32)


def _sq_distances(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """[A, B] squared distances ||a_i - b_j||^2 (clamped at 0 against rounding)."""
    return ((a * a).sum(1, keepdim=True) + b_sq - 2.0 * a @ b.T).clamp_min_(0.0)


def knn_sq_radii(x: Tensor, ks: tuple[int, ...], budget: int = CHUNK_BUDGET) -> list[Tensor]:
    """Squared distance [N] from every row of x [N, d] to its k-th nearest row of x (itself
    the 0-th), for each k in ks."""
    top = max(ks) + 1
    if top > len(x):
        raise ValueError(f"k = {max(ks)} nearest neighbours need more than {len(x)} points")
    x_sq = (x * x).sum(1)
    radii = [torch.empty(len(x), dtype=x.dtype, device=x.device) for _ in ks]
    rows = chunk_rows(len(x), len(x), budget)
    for i in range(0, len(x), rows):
        nearest = _sq_distances(x[i : i + rows], x, x_sq).topk(top, 1, largest=False).values
        for radius, k in zip(radii, ks, strict=True):
            radius[i : i + rows] = nearest[:, k]
    return radii


class ManifoldReference:
    """The real features R [N, d] and their k-NN radii, computed once, to score any number
    of fake sets (`compare`)."""

    def __init__(
        self,
        real: Tensor,
        k_pr: int = 3,
        k_dc: int = 5,
        dtype: torch.dtype = torch.float32,
        budget: int = CHUNK_BUDGET,
    ) -> None:
        self.center = real.double().mean(0).to(dtype)
        self.real = real.to(dtype) - self.center
        self.k_pr, self.k_dc, self.budget = k_pr, k_dc, budget
        self.real_sq = (self.real * self.real).sum(1)
        self.radius_pr, self.radius_dc = knn_sq_radii(self.real, (k_pr, k_dc), budget)

    def compare(self, fake: Tensor) -> dict[str, float]:
        """{"precision", "recall", "density", "coverage"} of fake features [M, d]."""
        if fake.dim() != 2 or fake.shape[1] != self.real.shape[1]:
            raise ValueError(f"fake features {list(fake.shape)} vs real {list(self.real.shape)}")
        fake = fake.to(self.real.device, self.real.dtype) - self.center
        (fake_radius,) = knn_sq_radii(fake, (self.k_pr,), self.budget)
        n = len(self.real)
        precise = in_density = 0
        recalled = torch.zeros(n, dtype=torch.bool, device=fake.device)
        nearest = torch.full((n,), float("inf"), dtype=fake.dtype, device=fake.device)
        rows = chunk_rows(len(fake), n, self.budget)
        for j in range(0, len(fake), rows):
            d = _sq_distances(fake[j : j + rows], self.real, self.real_sq)  # [rows, N]
            precise += int((d <= self.radius_pr).any(1).sum())
            in_density += int((d <= self.radius_dc).sum())
            recalled |= (d <= fake_radius[j : j + rows, None]).any(0)
            nearest = torch.minimum(nearest, d.min(0).values)
        m = len(fake)
        return {
            "precision": precise / m,
            "recall": float(recalled.double().mean()),
            "density": in_density / (self.k_dc * m),
            "coverage": float((nearest <= self.radius_dc).double().mean()),
        }


def manifold_scores(
    real: Tensor, fake: Tensor, k_pr: int = 3, k_dc: int = 5, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """Precision, recall, density and coverage of fake [M, d] against real [N, d] features."""
    return ManifoldReference(real, k_pr, k_dc, dtype).compare(fake)
