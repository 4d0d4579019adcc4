"""A Gaussian-mixture output layer: a drop-in replacement for a linear classifier.

Each of S classes is a mixture of G Gaussians over a d-dimensional feature space,

    p(x, y=s) = 1/S * sum_g pi_{s,g} N(P x; mu_{s,g}, Sigma_{s,g}),

where P is a fixed Achlioptas random projection when `dim` differs from `in_features`
(else the identity). The layer returns class log-posteriors log p(y|x) for `nll_loss`,
the joint log p(x, y), and the feature-space log-density log p(x) (an OOD score).

All constraints live in the parameterisation, so every optimizer step leaves a valid
mixture (the original re-projected its parameters after each step with
`sample_parameters()`, and its mixture weights received no gradient):

  * mixture weights  pi_{s,.} = softmax(logits_{s,.}) per class (learned by gradient);
  * "diag"     Sigma = diag(sigma^2),  sigma = softplus(rho) + floor;
  * "tril"     Sigma = L L^T, L lower triangular with L_ii = softplus(rho_i) + floor: L is
               the Cholesky factor of Sigma. The free off-diagonal numbers are those of
               U = L^{-1} (the Cholesky factor of the precision, Sigma^{-1} = U^T U, with
               U_ii = 1 / L_ii), a bijective change of coordinates of the same set of
               factors. Then |U (x - mu)|^2 is the Mahalanobis term and log|Sigma| =
               -2 sum log U_ii: a training step needs matrix products only, no
               triangular solve (slow on CPUs, forward and backward) and no factorisation;
  * "full"     Sigma = A A^T + floor^2 I with A a dense, unconstrained d x d matrix. It
               spans the same covariances as "tril" but through an over-complete square
               root (A and A Q give the same Sigma for any rotation Q; d^2 instead of
               d(d+1)/2 numbers), so every step pays a Cholesky factorisation of Sigma
               and the optimisation geometry differs. floor^2 I bounds every eigenvalue
               (a factorisation that float32 rounding breaks is redone in float64);
  * "lowrank"  Sigma = W W^T + diag(psi), W d x rank, sqrt(psi) = softplus(rho) + floor:
               the MFA covariance, evaluated with `gmlab.distributions.lowrank` (Woodbury
               identity and determinant lemma, never a d x d factorisation).

`floor` (default 1e-3) keeps densities bounded: it is a lower bound of every standard
deviation for "diag", "full" and "lowrank", and of every Cholesky diagonal for "tril".

Everything is batched over the S*G components (no `torch.distributions` objects), and
the math runs in float32 (or float64 when the parameters are float64) also under bf16 /
fp16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmlab.distributions.lowrank import lowrank_log_prob
from gmlab.errors import ConfigError, ShapeError
from gmlab.ops.linalg import cholesky_float64_retry
from gmlab.ops.moments import class_moments

COVARIANCES = ("diag", "tril", "full", "lowrank")


def achlioptas_matrix(
    out_features: int, in_features: int, s: float = 3.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Achlioptas (2001) sparse random projection [out_features, in_features].

    Entries are +sqrt(s/out_features) and -sqrt(s/out_features) with probability 1/(2s)
    each and 0 otherwise, so E[|P x|^2] = |x|^2 (s=3: two thirds of the entries are zero).
    """
    if s < 1:
        raise ValueError(f"Achlioptas sparsity s must be >= 1, got {s}")
    u = torch.rand(out_features, in_features, generator=generator)
    sign = (u < 1 / (2 * s)).float() - (u >= 1 - 1 / (2 * s)).float()
    return sign * math.sqrt(s / out_features)


class RandomProjection(nn.Module):
    """A fixed linear map x -> P x with an Achlioptas matrix P.

    P is a buffer: saved in the state dict (a checkpoint restores the same projection)
    and never trained. `seed` makes it reproducible independently of the global RNG.
    """

    def __init__(
        self, in_features: int, out_features: int, s: float = 3.0, seed: int | None = None
    ) -> None:
        super().__init__()
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.register_buffer("weight", achlioptas_matrix(out_features, in_features, s, gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.to(x.dtype).T

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^-1 of y > 0, elementwise: y + log(1 - exp(-y))."""
    return y + torch.log(-torch.expm1(-y))


class GaussianMixtureClassifier(nn.Module):
    """Gaussian-mixture classifier layer.

    Args:
        in_features: size of each input vector.
        n_classes: number of classes S.
        components_per_class: Gaussians per class G.
        dim: dimension d the mixture lives in; inputs are reduced by a fixed Achlioptas
            random projection when `dim` differs from `in_features` (default: no projection).
        covariance: "diag", "tril", "full" or "lowrank" (see the module docstring).
        rank: number of factors of "lowrank" (default min(10, d)).
        floor: lower bound of standard deviations / Cholesky diagonals.
        init_std: initial standard deviation of every component (covariance init_std^2 I).
        mean_init_std: means start as N(0, mean_init_std^2 I) draws (small, so that the
            initial class posteriors are near uniform, like a freshly initialised linear
            layer's; with N(0, I) means in 128 dimensions the first NLL is ~16 nats).
        projection_s: sparsity parameter s of the Achlioptas projection.
        projection_seed: seed of the projection (None: the global RNG).

    Shapes: inputs [B, in_features] (leading dimensions are flattened), outputs [B, S]
    (`forward`, `joint_log_prob`) or [B] (`log_prob`). Components are ordered class-major:
    component k = s * G + g.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        components_per_class: int = 1,
        dim: int | None = None,
        covariance: str = "diag",
        rank: int | None = None,
        floor: float = 1e-3,
        init_std: float = 1.0,
        mean_init_std: float = 0.1,
        projection_s: float = 3.0,
        projection_seed: int | None = None,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if in_features < 1 or n_classes < 1 or components_per_class < 1:
            raise ConfigError(
                "in_features, n_classes and components_per_class must be >= 1, got "
                f"{in_features}, {n_classes}, {components_per_class}"
            )
        if not 0 < floor < init_std:
            raise ConfigError(f"need 0 < floor < init_std, got floor={floor}, init_std={init_std}")
        d = dim or in_features
        self.in_features, self.dim = in_features, d
        self.n_classes, self.components_per_class = n_classes, components_per_class
        self.covariance, self.floor = covariance, floor
        k = n_classes * components_per_class
        self.projection = (
            RandomProjection(in_features, d, projection_s, projection_seed)
            if d != in_features
            else None
        )
        self.means = nn.Parameter(torch.randn(k, d) * mean_init_std)
        self.mixture_logits = nn.Parameter(torch.zeros(n_classes, components_per_class))
        raw = float(_inv_softplus(torch.tensor(init_std - floor, dtype=torch.float64)))
        self.rank = None
        if covariance == "full":
            # A = c I with c^2 + floor^2 = init_std^2
            c = math.sqrt(init_std**2 - floor**2)
            self.cov_factor = nn.Parameter(torch.eye(d).repeat(k, 1, 1) * c)
        elif covariance == "lowrank":
            self.rank = rank or min(10, d)
            if not 1 <= self.rank <= d:
                raise ConfigError(f"rank must be in [1, {d}], got {self.rank}")
            # small random factors (W = 0 would be a saddle point: zero gradient)
            self.cov_factor = nn.Parameter(torch.randn(k, d, self.rank) * 0.1 * init_std)
            self.raw_scale = nn.Parameter(torch.full((k, d), raw))
        else:
            self.raw_scale = nn.Parameter(torch.full((k, d), raw))
            if covariance == "tril":
                # strictly lower entries of U = L^{-1}; the upper triangle is unused
                self.precision_offdiag = nn.Parameter(torch.zeros(k, d, d))
                mask = torch.ones(d, d).tril(-1)
                self.register_buffer("strictly_lower", mask, persistent=False)

    # ----------------------------------------------------------- parameters
    @property
    def n_components(self) -> int:
        return self.n_classes * self.components_per_class

    def mixture_log_weights(self) -> torch.Tensor:
        """[S, G] log pi_{s,g}; each row's weights sum to one."""
        return self.mixture_logits.log_softmax(-1)

    def _scale(self, dtype: torch.dtype) -> torch.Tensor:
        """[K, d] softplus(rho) + floor: diag std, Cholesky diagonal or noise std."""
        return F.softplus(self.raw_scale.to(dtype)) + self.floor

    def precision_tril(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[K, d, d] U = L^{-1}, lower triangular, Sigma^{-1} = U^T U ("diag" and "tril")."""
        dtype = dtype or self.means.dtype
        if self.covariance not in ("diag", "tril"):
            raise ValueError(f"precision_tril is not kept for covariance={self.covariance!r}")
        diag = torch.diag_embed(self._scale(dtype).reciprocal())
        return diag if self.covariance == "diag" else diag + self._precision_offdiag(dtype)

    def _precision_offdiag(self, dtype: torch.dtype) -> torch.Tensor:
        """[K, d, d] the strictly lower part of U (a mask product: cheaper than tril() on a
        CPU, forward and backward)."""
        return self.precision_offdiag.to(dtype) * self.strictly_lower.to(dtype)

    def scale_tril(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[K, d, d] lower Cholesky factor L of every covariance."""
        dtype = dtype or self.means.dtype
        if self.covariance == "diag":
            return torch.diag_embed(self._scale(dtype))
        if self.covariance == "tril":
            u = self.precision_tril(dtype)
            eye = torch.eye(self.dim, dtype=dtype, device=u.device)
            return torch.linalg.solve_triangular(u, eye.expand_as(u), upper=False)
        if self.covariance == "full":
            return self._full_cholesky(dtype)
        return torch.linalg.cholesky(self.covariance_matrix(dtype))

    def _full_cholesky(self, dtype: torch.dtype) -> torch.Tensor:
        """Cholesky factor of A A^T + floor^2 I. When float32 rounding (relative ~1e-7 in
        A A^T) breaks the factorisation of an ill-conditioned covariance, it is redone in
        float64."""
        return cholesky_float64_retry(
            self.covariance_matrix,
            dtype,
            what="GaussianMixtureClassifier(covariance='full'): covariance of component",
            remedy="Raise `floor` (model.floor) or use covariance='tril'.",
        )

    def covariance_matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[K, d, d] dense covariances ("full": what the Cholesky factor is taken of; the
        other types use it only for inspection and tests)."""
        dtype = dtype or self.means.dtype
        if self.covariance == "lowrank":
            w = self.cov_factor.to(dtype)
            return w @ w.mT + torch.diag_embed(self._scale(dtype).square())
        if self.covariance == "full":
            a = self.cov_factor.to(dtype)
            return a @ a.mT + self.floor**2 * torch.eye(self.dim, dtype=dtype, device=a.device)
        chol = self.scale_tril(dtype)
        return chol @ chol.mT

    # ------------------------------------------------------------ refitting
    def check_refit(self) -> None:
        """ConfigError unless `refit` applies: one Gaussian per class, diag / tril / full."""
        if self.components_per_class != 1 or self.covariance == "lowrank":
            raise ConfigError(
                "the closed-form refit of the head needs components_per_class=1 and "
                f"covariance diag, tril or full; got components_per_class="
                f"{self.components_per_class}, covariance={self.covariance}"
            )

    @torch.no_grad()
    def refit(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Set each class's Gaussian to its maximum-likelihood fit on the (projected)
        inputs x [N, in_features] with labels [N] in 0..S-1, the closed-form M-step:
        mu_s = the class mean, Sigma_s = the class covariance + floor^2 I (what keeps the
        parameterisation's floor, and makes a singular class covariance valid)."""
        self.check_refit()
        means, covs, _ = class_moments(self._features(x), labels, self.n_classes)
        eye = torch.eye(self.dim, dtype=covs.dtype, device=covs.device)
        floor2 = self.floor**2
        above_floor = self.floor * (1 + 1e-6)  # softplus^-1(scale - floor) stays finite
        self.means.copy_(means)
        if self.covariance == "diag":
            std = (covs.diagonal(dim1=-2, dim2=-1) + floor2).sqrt().clamp_min(above_floor)
            self.raw_scale.copy_(_inv_softplus(std - self.floor))
        elif self.covariance == "tril":
            # Schur complements of Sigma + floor^2 I are >= floor^2: every L_ii >= floor
            chol = torch.linalg.cholesky(covs + floor2 * eye)
            diag = chol.diagonal(dim1=-2, dim2=-1).clamp_min(above_floor)
            chol = chol.tril(-1) + torch.diag_embed(diag)
            u = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
            self.raw_scale.copy_(_inv_softplus(diag - self.floor))
            self.precision_offdiag.copy_(u.tril(-1))
        else:  # full: A A^T = Sigma, A = V sqrt(Lambda) (Sigma may be singular)
            evals, evecs = torch.linalg.eigh(covs)
            self.cov_factor.copy_(evecs * evals.clamp_min(0).sqrt().unsqueeze(-2))

    # ----------------------------------------------------------------- math
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ShapeError(
                f"GaussianMixtureClassifier expects inputs [B, {self.in_features}], "
                f"got {list(x.shape)}"
            )
        dtype = torch.promote_types(x.dtype, self.means.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        x = x.reshape(x.shape[0], -1).to(dtype)
        return self.projection(x) if self.projection is not None else x

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """[B, d] projected features -> [B, K] log N(z; mu_k, Sigma_k)."""
        dtype = z.dtype
        mu = self.means.to(dtype)
        const = 0.5 * self.dim * math.log(2 * math.pi)
        if self.covariance in ("diag", "tril"):
            # w = U_k (z - mu_k) with U = diag(1 / scale) + strictly lower part O
            scale = self._scale(dtype)  # [K, d]
            inv_scale = scale.reciprocal()
            if self.covariance == "diag":
                w = inv_scale * (z.unsqueeze(1) - mu)  # [B, K, d]
            else:
                # w = O_k z + z / scale_k - U_k mu_k: one product for all K (the GEMM adds
                # the bias -U_k mu_k), one [B, K, d] multiply-add. O_k mu_k is a broadcast
                # product and a row sum: matrix products with K or 1 columns (a bmm, or the
                # diagonal of O mu^T) are several times slower, forward and backward
                off = self._precision_offdiag(dtype)  # [K, d, d]
                k = mu.shape[0]
                o_mu = (off * mu.unsqueeze(1)).sum(-1)  # [K, d]
                u_mu = torch.addcmul(o_mu, inv_scale, mu)
                oz = torch.addmm(u_mu.reshape(-1), z, off.view(-1, z.shape[1]).T, beta=-1.0)
                w = torch.addcmul(oz.view(z.shape[0], k, -1), z.unsqueeze(1), inv_scale)
            maha = w.square().sum(-1)  # [B, K]
            return -0.5 * maha - scale.log().sum(-1) - const
        if self.covariance == "lowrank":
            log_noise = 2 * self._scale(dtype).log()
            return lowrank_log_prob(z, mu, self.cov_factor.to(dtype), log_noise)
        chol = self._full_cholesky(dtype)  # [K, d, d]
        diff = (z.unsqueeze(0) - mu.unsqueeze(1)).mT  # [K, d, B]
        sol = torch.linalg.solve_triangular(chol, diff, upper=False)
        maha = sol.square().sum(1).T  # [B, K]
        half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * maha - half_logdet - const

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_features] -> [B, S] log p(x, y=s) with a uniform class prior 1/S."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            comp = self.component_log_prob(self._features(x))
            if self.components_per_class > 1:  # with G = 1, log pi = 0 and the sum is comp
                comp = comp.view(-1, self.n_classes, self.components_per_class)
                comp = (comp + self.mixture_log_weights().to(comp.dtype)).logsumexp(-1)
            return comp - math.log(self.n_classes)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_features] -> [B] log p(x), the mixture density of the (projected) inputs.
        An OOD score only as far as training made it a density of the inputs: with
        `nll_loss` alone just p(y|x) is fitted (see `gmlab.models.gmm_classifier`)."""
        return self.joint_log_prob(x).logsumexp(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_features] -> [B, S] class log-posteriors log p(y|x) (for `nll_loss`)."""
        return self.joint_log_prob(x).log_softmax(-1)

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank else ""
        return (
            f"in_features={self.in_features}, dim={self.dim}, n_classes={self.n_classes}, "
            f"components_per_class={self.components_per_class}, "
            f"covariance={self.covariance!r}{rank}, floor={self.floor}"
        )


class LinearClassifier(nn.Linear):
    """The baseline the layer replaces: [B, in_features] -> [B, S] logits, an unnormalised
    log p(x, y); built with the same arguments as `GaussianMixtureClassifier`."""

    def __init__(self, in_features: int, n_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, n_classes, bias=bias)
