"""Low-rank-plus-diagonal Gaussians, K of them at once (pure torch, differentiable).

Component k has covariance Sigma_k = A_k A_k^T + D_k with factor loadings A_k [d, l] and a
diagonal noise D_k = diag(exp(log_noise_k)) (a [K, 1] `log_noise` means isotropic noise,
D_k = sigma_k^2 I). No d x d matrix is ever formed:

* Woodbury: Sigma^-1 = D^-1 - V L^-1 V^T with V = D^-1 A [d, l], L = I + A^T D^-1 A [l, l];
* determinant lemma: log|Sigma| = log|L| + sum_j log D_j.

With L = C C^T (Cholesky) and the whitened projection P = V C^-T [d, l], the Mahalanobis
term is

    (x-mu)^T Sigma^-1 (x-mu) = sum_j (x_j-mu_j)^2 / D_j  -  || P^T (x - mu) ||^2

and for all N points and K components it is two matrix products over all K at once:
[N, d] @ [d, K*l + K] (projections and the cross term) and [N, d] @ [d, K] (the squares),
chunked over N so that memory stays O(chunk * K * l); no [N, K, d] tensor exists.

Float32 stability: the expansion sum (x^2 - 2 x mu + mu^2) / D cancels, so both x and the
means are shifted by a common `shift` first (default: the mean of the means). Constant
data dimensions then become exact zeros, however small their noise variance.

Public API
----------
    lowrank_log_prob(x, means, factors, log_noise)      -> [N, K] log N(x_n; mu_k, Sigma_k)
    LowRankGaussians.from_params(means, factors, log_noise, shift=None)
        .log_prob(x)                                    -> [N, K]
        .project(x)                                     -> ([N, K] log-densities,
                                                            [N, K, l] raw projections x~ @ P)
    lowrank_covariance(factors, log_noise)              -> [K, d, d] (tests / tiny d only)

Used by `gmlab.distributions.mfa` (MFA / MPPCA) and by the GMM classifier's
`covariance="lowrank"`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gmlab.distributions.normal import LOG_2PI
from gmlab.ops.chunks import chunk_rows
from gmlab.ops.linalg import cholesky_float64_retry

__all__ = [
    "LowRankGaussians",
    "lowrank_covariance",
    "lowrank_log_prob",
]


def _check_params(means: Tensor, factors: Tensor, log_noise: Tensor) -> tuple[int, int, int]:
    if means.dim() != 2:
        raise ValueError(f"means must be [K, d], got {tuple(means.shape)}")
    k, d = means.shape
    if factors.dim() != 3 or factors.shape[:2] != (k, d):
        raise ValueError(f"factors must be [K, d, l] = [{k}, {d}, l], got {tuple(factors.shape)}")
    if log_noise.dim() != 2 or log_noise.shape[0] != k or log_noise.shape[1] not in (1, d):
        raise ValueError(
            f"log_noise must be [K, d] (diagonal) or [K, 1] (isotropic) with K={k}, d={d}; "
            f"got {tuple(log_noise.shape)}"
        )
    return k, d, factors.shape[2]


@dataclass
class LowRankGaussians:
    """K low-rank-plus-diagonal Gaussians with everything the densities need precomputed.

    Attributes (all differentiable functions of the parameters):
        means: [K, d] mu_k.
        factors: [K, d, l] A_k.
        log_noise: [K, d] or [K, 1] log D_k.
        shift: [d] common offset subtracted from x and mu before the expansion.
        inv_noise: [K, d] or [K, 1] D_k^-1.
        chol: [K, l, l] C_k, lower Cholesky factor of L_k = I + A_k^T D_k^-1 A_k.
        proj: [K, d, l] P_k = D_k^-1 A_k C_k^-T.
        log_det: [K] log|Sigma_k|.
        mean_proj: [K, l] P_k^T (mu_k - shift).
        mean_quad: [K] sum_j (mu_kj - shift_j)^2 / D_kj.
    """

    means: Tensor
    factors: Tensor
    log_noise: Tensor
    shift: Tensor
    inv_noise: Tensor
    chol: Tensor
    proj: Tensor
    log_det: Tensor
    mean_proj: Tensor
    mean_quad: Tensor
    _weight: Tensor | None = None

    @classmethod
    def from_params(
        cls, means: Tensor, factors: Tensor, log_noise: Tensor, shift: Tensor | None = None
    ) -> LowRankGaussians:
        """Precompute the Cholesky factors and projections of K components (O(K d l^2))."""
        k, d, l = _check_params(means, factors, log_noise)
        if shift is None:
            shift = means.detach().mean(0)
        shift = shift.to(means)
        inv_noise = torch.exp(-log_noise)
        v = factors * inv_noise.unsqueeze(-1)  # [K, d, l]  D^-1 A
        eye = torch.eye(l, dtype=means.dtype, device=means.device)

        def lmat(dtype: torch.dtype) -> Tensor:  # [K, l, l]  L = I + A^T D^-1 A
            return eye.to(dtype) + factors.transpose(1, 2).to(dtype) @ v.to(dtype)

        # with a tiny noise floor and nearly collinear factors the Gram term reaches ~1e9,
        # where float32 rounding (~1e2) swamps the identity: such L are redone in float64
        chol = cholesky_float64_retry(
            lmat,
            means.dtype,
            what="I + A^T D^-1 A of component",
            remedy="Its noise variances are tiny against its factors: raise the noise floor "
            "or lower the latent dimension.",
        )
        # P = V C^-T through the tiny [K, l, l] inverse (a wide triangular solve is slow)
        cinv = torch.linalg.solve_triangular(chol, eye.expand(k, l, l), upper=False)
        proj = v @ cinv.transpose(1, 2)  # [K, d, l]
        log_noise_sum = log_noise.sum(1) * (d if log_noise.shape[1] == 1 else 1)
        log_det = 2.0 * torch.diagonal(chol, dim1=1, dim2=2).log().sum(1) + log_noise_sum
        mc = means - shift
        mean_proj = torch.einsum("kd,kdl->kl", mc, proj)
        mean_quad = (mc.square() * inv_noise).sum(1)
        return cls(
            means, factors, log_noise, shift, inv_noise, chol, proj, log_det, mean_proj, mean_quad
        )

    # ------------------------------------------------------------------ shapes
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def rank(self) -> int:
        return self.factors.shape[2]

    @property
    def isotropic(self) -> bool:
        return self.log_noise.shape[1] == 1 and self.dim != 1

    # -------------------------------------------------------------- densities
    @property
    def weight(self) -> Tensor:
        """[K l + K, d] = [P_1^T; ..; P_K^T; D^-1 (mu - shift)]: what x~ is multiplied by
        (stored row-major like `nn.Linear.weight`: x~ @ weight.T is the faster GEMM form)."""
        if self._weight is None:
            k, d, l = self.n_components, self.dim, self.rank
            proj_rows = self.proj.transpose(1, 2).reshape(k * l, d)
            cross_w = (self.means - self.shift) * self.inv_noise.expand(k, d)  # D^-1 mu~
            self._weight = torch.cat([proj_rows, cross_w], dim=0).contiguous()
        return self._weight

    def evaluate_shifted(self, xc: Tensor, sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Shifted rows x~ = x - shift [n, d] -> (log-densities [n, K], raw projections
        x~ @ P_k [n, K, l]), in one [n, d] x [d, K l + K] product plus the squares' product.

        `sq`: x~^2 [n, d] if the caller has it already (only its row sums for isotropic
        noise).
        """
        k, d, l = self.n_components, self.dim, self.rank
        both = xc @ self.weight.T  # one product: [n, K l + K]
        y_raw = both[:, : k * l].view(xc.shape[0], k, l)
        cross = both[:, k * l :]
        if sq is None:
            sq = xc.square()
        if self.isotropic:
            quad = sq.sum(1, keepdim=True) * self.inv_noise.T  # [n, K]
        else:
            quad = sq @ self.inv_noise.T
        y = y_raw - self.mean_proj
        maha = quad.add_(cross, alpha=-2.0).add_(self.mean_quad).sub_(y.square().sum(-1))
        maha = maha.clamp_min_(0.0)  # exact value is >= 0; cancellation can dip below
        log_prob = maha.add_(self.log_det + d * LOG_2PI).mul_(-0.5)
        return log_prob, y_raw

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Log-densities [N, K] and raw whitened projections (x - shift) @ P_k, [N, K, l].

        One chunk (no chunking): the EM E-step calls this per batch.
        """
        x = x.to(self.means.dtype)
        return self.evaluate_shifted(x - self.shift)

    def log_prob(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """[N, d] -> [N, K] log N(x_n; mu_k, A_k A_k^T + D_k), chunked over N."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [N, {self.dim}], got {tuple(x.shape)}")
        x = x.to(self.means.dtype)
        width = self.n_components * (self.rank + 2) + self.dim
        rows = chunk_size or chunk_rows(x.shape[0], width)
        if rows >= x.shape[0]:
            return self.evaluate_shifted(x - self.shift)[0]
        return torch.cat(
            [
                self.evaluate_shifted(x[i : i + rows] - self.shift)[0]
                for i in range(0, x.shape[0], rows)
            ]
        )


def lowrank_log_prob(
    x: Tensor,
    means: Tensor,
    factors: Tensor,
    log_noise: Tensor,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-densities of N points under K low-rank-plus-diagonal Gaussians.

    Args:
        x: [N, d] points.
        means: [K, d] mu_k.
        factors: [K, d, l] factor loadings A_k (l may be 0: diagonal Gaussians).
        log_noise: [K, d] log-variances of the diagonal noise D_k, or [K, 1] for
            isotropic noise sigma_k^2 I.
        chunk_size: rows per chunk (default: ~64 MiB of work memory).

    Returns:
        [N, K] log N(x_n; mu_k, A_k A_k^T + D_k), differentiable in every argument.
        Cost O(N d K (l + 2)) in three matrix products; memory O(chunk K l).

    The same values as torch's dense `MultivariateNormal`:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x, means = torch.randn(5, 3), torch.randn(2, 3)
    >>> factors, log_noise = torch.randn(2, 3, 1), torch.randn(2, 3)
    >>> cov = factors @ factors.mT + torch.diag_embed(log_noise.exp())
    >>> reference = torch.distributions.MultivariateNormal(means, cov).log_prob(x[:, None])
    >>> torch.allclose(lowrank_log_prob(x, means, factors, log_noise), reference, atol=1e-5)
    True
    """
    return LowRankGaussians.from_params(means, factors, log_noise).log_prob(x, chunk_size)


def lowrank_covariance(factors: Tensor, log_noise: Tensor) -> Tensor:
    """The dense covariances [K, d, d] = A A^T + D (reference for tests; O(K d^2) memory)."""
    d = factors.shape[1]
    noise = torch.exp(log_noise).expand(factors.shape[0], d)
    return factors @ factors.transpose(1, 2) + torch.diag_embed(noise)
