"""Fréchet distance (FD) and kernel distance (KID) between two sets of feature vectors.

Both are torchmetrics' `FrechetInceptionDistance` and `KernelInceptionDistance`, fed
features computed once elsewhere (a pass-through "feature extractor"), so that one feature
pass serves FD, KID, precision / recall and density / coverage alike.

    FD  = ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))      (Gaussian fits, [d] / [d, d])
    KID = unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3, averaged over `subsets`
          random subsets of `subset_size` rows of each set (its std over the subsets too)

FD is biased upwards at finite sample sizes (compare FDs of equal sample sizes only); KID
is unbiased, near 0 (and possibly < 0) for two samples of one distribution.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class _Precomputed(nn.Module):
    """The identity on [B, d] feature batches, posing as the metrics' feature extractor."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _check(real: Tensor, fake: Tensor, least: int = 2) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected feature sets [N, d] and [M, d], got {list(real.shape)} and "
            f"{list(fake.shape)}"
        )
    if min(len(real), len(fake)) < least:
        raise ValueError(f"need at least {least} feature vectors in each set")


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FD between the Gaussian fits (mean, unbiased covariance) of real [N, d] and fake
    [M, d] features, in float64."""
    _check(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over `subsets`) between real [N, d] and fake [M, d] features; each
        subset draws min(subset_size, N, M) rows of each set without replacement, from a
        generator seeded with `seed` (the global torch seed is left as it was). Kernels in
    float32: their rounding (~1e-6) is far below KID's spread over subsets."""
    _check(real, fake)
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
