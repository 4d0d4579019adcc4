"""Per-class sample moments, the closed-form fit of class-conditional Gaussians."""

from __future__ import annotations

import torch

from gmlab.errors import ShapeError


def class_moments(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum-likelihood Gaussian moments of x [N, d] per class of labels [N] in
    0..S-1, in float64: means [S, d], covariances [S, d, d] (divided by the class count)
    and counts [S]. Every class needs at least one sample."""
    if x.dim() != 2 or labels.shape != x.shape[:1]:
        raise ShapeError(f"need x [N, d] and labels [N], got {list(x.shape)}, {list(labels.shape)}")
    x, labels = x.detach().double(), labels.detach().to(x.device).long()
    counts = torch.bincount(labels.clamp(0, num_classes), minlength=num_classes + 1)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing or counts[num_classes] or bool((labels < 0).any()):
        raise ShapeError(
            f"labels must lie in 0..{num_classes - 1} with every class present; got labels "
            f"{int(labels.min())}..{int(labels.max())}, classes without samples: {missing}"
        )
    means, covs = [], []
    for c in range(num_classes):
        xc = x[labels == c]
        mu = xc.mean(0)
        centred = xc - mu
        means.append(mu)
        covs.append(centred.T @ centred / len(xc))
    return torch.stack(means), torch.stack(covs), counts[:num_classes].double()
