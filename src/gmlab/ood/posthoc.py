"""Class-conditional Gaussians refitted on a trained network's features (post hoc).

The density of DDU (Mukhoti et al. 2021): one full-covariance Gaussian per class, fitted
by maximum likelihood on training features, mixed with the class frequencies:

    log p(f) = logsumexp_c [ log pi_c + log N(f; mu_c, Sigma_c) ].

Lee et al. (2018) score the same features by the Mahalanobis distance to the nearest
class mean under one shared covariance; the per-class form needs no retraining either.
Fitted in float64; a covariance that is singular (fewer samples than feature dimensions,
dead features) gets the smallest jitter eps * mean variance * I, eps = 1e-6, 1e-5, ...,
that makes its Cholesky factorisation succeed.
"""

from __future__ import annotations

import math

import torch

from gmlab.errors import SingularCovarianceError
from gmlab.ops.moments import class_moments


class ClassGaussians:
    """Per-class Gaussians over features [N, d]; `log_prob(f) -> [N]` log p(f) in nats."""

    def __init__(self, max_jitter_tries: int = 10) -> None:
        self.max_jitter_tries = max_jitter_tries
        self.means: torch.Tensor | None = None  # [S, d]
        self.chol: torch.Tensor | None = None  # [S, d, d] lower Cholesky factors
        self.log_weights: torch.Tensor | None = None  # [S]

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> ClassGaussians:
        """Fit on features [N, d] with labels [N] in 0..S-1 (every class present)."""
        labels = labels.cpu()
        means, covs, counts = class_moments(features.cpu(), labels, int(labels.max()) + 1)
        self.means = means
        self.chol = torch.stack([self._cholesky(cov, c) for c, cov in enumerate(covs)])
        self.log_weights = counts.div(len(labels)).log()
        return self

    def _cholesky(self, cov: torch.Tensor, label: int) -> torch.Tensor:
        scale = cov.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(len(cov), dtype=cov.dtype)
        for attempt in range(self.max_jitter_tries + 1):
            jitter = 0.0 if attempt == 0 else 10.0 ** (attempt - 7) * scale
            chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
            if int(info) == 0:
                return chol
        raise SingularCovarianceError(
            f"the features of class {label} have a covariance that stays singular with "
            f"jitter up to {10.0 ** (self.max_jitter_tries - 7):g} x its mean variance"
        )

    def class_log_prob(self, features: torch.Tensor) -> torch.Tensor:
        """[N, S] log pi_c + log N(f; mu_c, Sigma_c)."""
        if self.means is None:
            raise RuntimeError("ClassGaussians.fit must be called first")
        f = features.detach().double().cpu()
        d = f.shape[1]
        diff = (f[None] - self.means[:, None]).transpose(1, 2)  # [S, d, N]
        z = torch.linalg.solve_triangular(self.chol, diff, upper=False)  # [S, d, N]
        maha = z.square().sum(1)  # [S, N]
        log_det = 2.0 * self.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [S]
        log_n = -0.5 * (maha + log_det[:, None] + d * math.log(2 * math.pi))
        return (log_n + self.log_weights[:, None]).T

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        """[N] log p(f) (float32)."""
        return self.class_log_prob(features).logsumexp(-1).float()
