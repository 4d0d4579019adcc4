"""Mixtures of factor analyzers (MFA) and of probabilistic PCAs (MPPCA), and their EM.

    p(x) = sum_k pi_k N(x; mu_k, A_k A_k^T + D_k),   A_k: [d, l],
    D_k diagonal (noise="diagonal", MFA) or sigma_k^2 I (noise="isotropic", MPPCA).

Everything is batched over the K components (no Python loop over K) and chunked over
points; see `gmlab.distributions.lowrank` for the density math.

Contents
--------
`MixtureOfFactorAnalyzers` (nn.Module): the parameters (means, factors, log_noise,
logits) and inference: `log_prob`, `component_log_prob`, `responsibilities`, `predict`
(MAP component), `sample(n, with_noise)`, `reconstruct(x, mask, mode)` (in-painting with
one boolean mask per sample).

EM, as pure functions over float64 sufficient statistics:

* `SufficientStats` accumulates, over any number of batches (and processes: `flat()` /
  `load_flat()` for one all-reduce), with x~ = x - shift and P_k the whitened projection
  of the *old* parameters (`LowRankGaussians.proj`):
      s0 = sum_n r_nk            [K]
      s1 = sum_n r_nk x~_n       [K, d]
      s2 = sum_n r_nk x~_n^2     [K, d]   ([K, 1]: sum r |x~|^2 for isotropic noise)
      t  = sum_n r_nk x~_n (x~_n^T P_k)   [K, d, l]
  Per batch the E-step is four matrix products over all K at once:
      x~ @ [P | D^-1 mu~]  [n,d]x[d,K(l+1)],   x~^2 @ D^-1  [n,d]x[d,K],
      x~^T @ [r*(x~ P) | r]  [d,n]x[n,K(l+1)], (x~^2)^T @ r  [d,n]x[n,K].
* `m_step(stats, gaussians, noise, ...)` turns them into new parameters in closed form:
  Ghahramani & Hinton (1996) for diagonal noise (joint update of [A_k, mu_k]),
  Tipping & Bishop (1999, appendix C) for isotropic noise, solving its small SPD systems
  by Cholesky (no LU: see `gmlab.ops.linalg`). With l = 0 the diagonal
  update is exactly the EM step of a diagonal-covariance GMM. Noise variances are then
  max(estimate + noise_reg, noise_floor) (`noise_reg` = scikit-learn's `reg_covar`; with
  noise_reg > 0 this is a regularised estimate, no longer exact EM).
* Empty components (responsibility mass below `min_count`) are re-seeded at the worst
  explained points seen in the E-step, copying the factors and noise of the component
  that explains that point best and splitting its weight.
* Initialisation: `init_rnd_samples` (torch-mfa's small-sample PPCA on random points) and
  `init_kmeans` (clusters -> means, per-cluster PPCA factors and variances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gmlab.distributions.lowrank import LowRankGaussians
from gmlab.distributions.normal import LOG_2PI
from gmlab.errors import NonFiniteError
from gmlab.ops.chunks import chunk_rows
from gmlab.ops.linalg import cholesky_float64_retry, describe_indices

__all__ = [
    "MixtureOfFactorAnalyzers",
    "SufficientStats",
    "NOISE_TYPES",
    "e_step",
    "init_kmeans",
    "init_rnd_samples",
    "m_step",
    "small_sample_ppca",
]

NOISE_TYPES = ("diagonal", "isotropic")


class MixtureOfFactorAnalyzers(nn.Module):
    """K Gaussians with low-rank-plus-diagonal covariances, mixed with learned weights.

    Args:
        n_components: K.
        dim: d, the data dimension.
        n_factors: l, latent factors per component (0 gives a diagonal GMM).
        noise: "diagonal" (MFA, D_k a free diagonal) or "isotropic" (MPPCA, sigma_k^2 I).

    Parameters: `means` [K, d], `factors` [K, d, l], `log_noise` [K, d] or [K, 1]
    (log-variances), `logits` [K] (mixture weights = softmax(logits)).
    """

    def __init__(self, n_components: int, dim: int, n_factors: int, noise: str = "diagonal"):
        super().__init__()
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
        if n_components < 1 or dim < 1 or n_factors < 0:
            raise ValueError(
                f"need n_components >= 1, dim >= 1, n_factors >= 0; got "
                f"{n_components}, {dim}, {n_factors}"
            )
        self.noise = noise
        k, d, l = n_components, dim, n_factors
        self.means = nn.Parameter(torch.zeros(k, d))
        self.factors = nn.Parameter(torch.zeros(k, d, l))
        self.log_noise = nn.Parameter(torch.zeros(k, d if noise == "diagonal" else 1))
        self.logits = nn.Parameter(torch.zeros(k))

    # ----------------------------------------------------------------- shapes
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_factors(self) -> int:
        return self.factors.shape[2]

    @property
    def log_weights(self) -> Tensor:
        return torch.log_softmax(self.logits, 0)

    @property
    def weights(self) -> Tensor:
        return torch.softmax(self.logits, 0)

    @property
    def noise_variance(self) -> Tensor:
        """[K, d] diagonal noise variances (isotropic noise expanded)."""
        return torch.exp(self.log_noise).expand(self.n_components, self.dim)

    def gaussians(self, shift: Tensor | None = None) -> LowRankGaussians:
        """The precomputed component densities (Cholesky factors, projections)."""
        return LowRankGaussians.from_params(self.means, self.factors, self.log_noise, shift)

    @torch.no_grad()
    def set_params(
        self,
        means: Tensor | None = None,
        factors: Tensor | None = None,
        noise_variance: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> None:
        """Overwrite parameters in place (EM updates, initialisation); None keeps one.

        `noise_variance` is [K, d] or [K, 1] (reduced by the mean for isotropic noise);
        `weights` are normalised and stored as log-weights in `logits`.
        """
        if means is not None:
            self.means.copy_(means)
        if factors is not None:
            self.factors.copy_(factors)
        if noise_variance is not None:
            var = noise_variance.to(self.log_noise.dtype)
            if var.dim() == 1:
                var = var[:, None]
            if self.noise == "isotropic" and var.shape[1] != 1:
                var = var.mean(1, keepdim=True)
            self.log_noise.copy_(torch.log(var).expand_as(self.log_noise))
        if weights is not None:
            w = weights.to(self.logits.dtype)
            self.logits.copy_(torch.log(w / w.sum()))

    # -------------------------------------------------------------- inference
    def _flat(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1) if x.dim() != 2 else x
        if x.shape[1] != self.dim:
            raise ValueError(f"expected points of dimension {self.dim}, got {tuple(x.shape)}")
        return x.to(self.means.dtype)

    def component_log_prob(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """[N, d] -> [N, K] log N(x_n; mu_k, Sigma_k) (without the mixture weights)."""
        return self.gaussians().log_prob(self._flat(x), chunk_size)

    def joint_log_prob(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """[N, K] log pi_k + log N(x_n; mu_k, Sigma_k)."""
        return self.component_log_prob(x, chunk_size) + self.log_weights

    def log_prob(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """[N, d] -> [N] log p(x_n) (nats)."""
        return torch.logsumexp(self.joint_log_prob(x, chunk_size), 1)

    def with_noise_floor(self, floor: float) -> MixtureOfFactorAnalyzers:
        """A copy (no gradient) whose noise variances are raised to at least `floor`."""
        twin = MixtureOfFactorAnalyzers(self.n_components, self.dim, self.n_factors, self.noise)
        twin = twin.to(self.means.device, self.means.dtype)
        twin.load_state_dict({k: v.detach() for k, v in self.state_dict().items()})
        with torch.no_grad():
            twin.log_noise.clamp_(min=math.log(floor))
        return twin.requires_grad_(False)

    def responsibilities(self, x: Tensor) -> Tensor:
        """[N, K] posterior component probabilities p(k | x_n)."""
        return torch.softmax(self.joint_log_prob(x), 1)

    def predict(self, x: Tensor) -> Tensor:
        """[N] MAP component argmax_k p(k | x_n)."""
        return self.joint_log_prob(x).argmax(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        with_noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """n samples [n, d] and their components [n]: x = mu_k + A_k z (+ D_k^1/2 eps)."""
        dev, dt = self.means.device, self.means.dtype
        comp = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.n_factors, device=dev, dtype=dt, generator=generator)
        out = self.means[comp].clone()
        rows = chunk_rows(n, self.dim * max(self.n_factors, 1))
        for i in range(0, n, rows):
            a = self.factors[comp[i : i + rows]]  # [rows, d, l]
            out[i : i + rows] += torch.einsum("ndl,nl->nd", a, z[i : i + rows])
        if with_noise:
            eps = torch.randn(n, self.dim, device=dev, dtype=dt, generator=generator)
            out += torch.exp(0.5 * self.log_noise)[comp] * eps
        return out, comp

    @torch.no_grad()
    def observed_posterior(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior over components and factors given only the observed coordinates.

        Args:
            x: [B, d] points (hidden coordinates may hold anything finite).
            mask: [B, d] bool, True where observed; may differ between rows.

        Returns:
            log p(x_o, k) [B, K] (log pi_k + the observed marginal's log-density) and
            E[z | x_o, k] [B, K, l].
        """
        x = self._flat(x)
        if mask.shape != x.shape:
            raise ValueError(f"mask must have the shape of x {tuple(x.shape)}, got {mask.shape}")
        k, d, l = self.n_components, self.dim, self.n_factors
        dt = x.dtype
        shift = self.means.mean(0)
        m = mask.to(dt)
        xt = (x - shift) * m
        mu_t = self.means - shift
        inv_noise = torch.exp(-self.log_noise).expand(k, d)
        log_noise = self.log_noise.expand(k, d)
        v = self.factors * inv_noise.unsqueeze(-1)  # [K, d, l]
        v_flat = v.permute(1, 0, 2).reshape(d, k * l)
        vmu_flat = (v * mu_t.unsqueeze(-1)).permute(1, 0, 2).reshape(d, k * l)
        b = (xt @ v_flat - m @ vmu_flat).view(-1, k, l)  # A^T D_o^-1 (x_o - mu_o)
        quad = xt.square() @ inv_noise.T - 2 * xt @ (inv_noise * mu_t).T
        quad = quad + m @ (inv_noise * mu_t.square()).T
        # L_o = I + sum_j m_j V_j A_j^T: one [B, d] x [d, Kc l l] product per chunk of K
        lo = torch.empty(x.shape[0], k, l, l, dtype=dt, device=x.device)
        kc = chunk_rows(k, d * l * l)
        for s in range(0, k, kc):
            outer = torch.einsum("kdi,kdj->dkij", v[s : s + kc], self.factors[s : s + kc])
            lo[:, s : s + kc] = (m @ outer.reshape(d, -1)).view(-1, outer.shape[1], l, l)
        lo = lo + torch.eye(l, dtype=dt, device=x.device)
        chol = torch.linalg.cholesky(lo)
        ez = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)  # L_o^-1 b
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1) + m @ log_noise.T
        maha = (quad - (b * ez).sum(-1)).clamp_min(0.0)
        n_obs = m.sum(1, keepdim=True)
        log_joint = -0.5 * (n_obs * LOG_2PI + logdet + maha) + self.log_weights
        return log_joint, ez

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mask: Tensor, mode: str = "map") -> Tensor:
        """In-painting: observed coordinates kept, hidden ones set to their conditional mean.

        The component posterior comes from the observed coordinates' marginal; the hidden
        coordinates get mu_h + A_h E[z | x_o] under the MAP component (`mode="map"`) or the
        responsibility-weighted mean over components (`mode="mixture"`, the exact
        conditional mean E[x_h | x_o] of the mixture).

        Args:
            x: [B, d]; mask: [B, d] bool, True = observed.

        Returns:
            [B, d] with x where mask is True.
        """
        if mode not in ("map", "mixture"):
            raise ValueError(f"mode must be 'map' or 'mixture', got {mode!r}")
        x = self._flat(x)
        mask = mask.reshape(x.shape).bool()
        k, d, l = self.n_components, self.dim, self.n_factors
        out = torch.empty_like(x)
        rows = chunk_rows(x.shape[0], k * (l * l + l + 2) + 2 * d)
        for i in range(0, x.shape[0], rows):
            xs, ms = x[i : i + rows], mask[i : i + rows]
            log_joint, ez = self.observed_posterior(xs, ms)
            if mode == "map":
                best = log_joint.argmax(1)
                zb = ez[torch.arange(len(best), device=x.device), best]
                rec = self.means[best] + torch.einsum("bdl,bl->bd", self.factors[best], zb)
            else:
                r = torch.softmax(log_joint, 1)
                a_flat = self.factors.permute(1, 0, 2).reshape(d, k * l)
                rec = r @ self.means + (r.unsqueeze(-1) * ez).reshape(-1, k * l) @ a_flat.T
            out[i : i + rows] = torch.where(ms, xs, rec)
        return out


# ----------------------------------------------------------------------- EM
@dataclass
class SufficientStats:
    """Float64 accumulators of one EM pass (see the module docstring)."""

    s0: Tensor
    s1: Tensor
    s2: Tensor
    t: Tensor
    log_lik: Tensor  # sum over points of log p(x_n) under the old parameters
    count: Tensor  # number of points
    # the worst explained points (for re-seeding empty components)
    worst_x: Tensor = field(default=None)
    worst_ll: Tensor = field(default=None)
    worst_comp: Tensor = field(default=None)
    num_worst: int = 0

    @classmethod
    def zeros(
        cls, k: int, d: int, l: int, isotropic: bool, device=None, num_worst: int | None = None
    ) -> SufficientStats:
        f64 = dict(dtype=torch.float64, device=device)
        m = min(k, 64) if num_worst is None else num_worst
        return cls(
            s0=torch.zeros(k, **f64),
            s1=torch.zeros(k, d, **f64),
            s2=torch.zeros(k, 1 if isotropic else d, **f64),
            t=torch.zeros(k, d, l, **f64),
            log_lik=torch.zeros((), **f64),
            count=torch.zeros((), **f64),
            worst_x=torch.zeros(0, d, device=device),
            worst_ll=torch.zeros(0, device=device),
            worst_comp=torch.zeros(0, dtype=torch.long, device=device),
            num_worst=m,
        )

    _SUMMED = ("s0", "s1", "s2", "t", "log_lik", "count")

    def flat(self) -> Tensor:
        """All summed statistics as one float64 vector (for a single all-reduce)."""
        return torch.cat([getattr(self, n).reshape(-1) for n in self._SUMMED])

    def load_flat(self, vec: Tensor) -> None:
        """Inverse of `flat` (after the all-reduce)."""
        i = 0
        for n in self._SUMMED:
            t = getattr(self, n)
            setattr(self, n, vec[i : i + t.numel()].view_as(t).clone())
            i += t.numel()

    def add_worst(self, x: Tensor, ll: Tensor, comp: Tensor) -> None:
        """Keep the `num_worst` lowest-likelihood points seen so far."""
        if self.num_worst == 0 or len(ll) == 0:
            return
        xs = torch.cat([self.worst_x, x.to(self.worst_x.dtype)])
        lls = torch.cat([self.worst_ll, ll.to(self.worst_ll.dtype)])
        comps = torch.cat([self.worst_comp, comp])
        m = min(self.num_worst, len(lls))
        idx = torch.topk(lls, m, largest=False).indices
        self.worst_x, self.worst_ll, self.worst_comp = xs[idx], lls[idx], comps[idx]


# Rows per E-step block: on a CPU a block's [rows, d] and [rows, K (l + 1)] work tensors
# stay near the caches between the four products; on a GPU large blocks mean few launches.
E_STEP_ROWS = {"cpu": 2048, "other": 16384}
# Responsibilities below 2^-80 are set to 0 before the statistics' products. Left in, the
# float32 exponential makes subnormal numbers (below 2^-126), on which the CPU's products
# run several times slower. The mass they drop from a component over n points is below
# n 2^-80, far below the float32 rounding of any component the M-step keeps (mass >= 1e-3).
LOG_RESP_FLOOR = -80 * math.log(2.0)


@torch.no_grad()
def e_step(
    x: Tensor,
    gauss: LowRankGaussians,
    log_weights: Tensor,
    stats: SufficientStats,
    resp_gauss: LowRankGaussians | None = None,
    resp_index: Tensor | None = None,
    block_rows: int | None = None,
) -> Tensor:
    """Accumulate one batch's sufficient statistics; returns its log-likelihoods [n].

    The batch is processed in blocks of `block_rows` rows; the statistics are summed over
    the batch in the parameters' dtype (`addmm_` into one buffer per statistic) and added
    to the float64 accumulators once per batch.

    Args:
        x: [n, d] points (model space).
        gauss: the current parameters, precomputed (`LowRankGaussians.from_params`).
        log_weights: [K] log mixture weights.
        stats: accumulators, updated in place.
        resp_gauss, resp_index: feature sampling: responsibilities from the marginal over
            the coordinates `resp_index` (its precomputed Gaussians `resp_gauss`), the
            statistics from all coordinates. The returned log-likelihoods are then those
            of the sampled coordinates.
        block_rows: rows per block (default `E_STEP_ROWS` for the device).
    """
    k, d, l = gauss.n_components, gauss.dim, gauss.rank
    n = x.shape[0]
    dt, dev = gauss.means.dtype, gauss.means.device
    isotropic = stats.s2.shape[1] == 1
    log_weights = log_weights.to(dt)
    both = torch.zeros(k * (l + 1), d, dtype=dt, device=dev)  # x~^T [r * (x~ P) | r]
    s2 = torch.zeros(k, 1 if isotropic else d, dtype=dt, device=dev)
    s0 = torch.zeros(k, dtype=dt, device=dev)
    ll = torch.empty(n, dtype=dt, device=dev)
    best = torch.empty(n, dtype=torch.long, device=dev)
    rows = max(1, block_rows or E_STEP_ROWS["cpu" if dev.type == "cpu" else "other"])
    rhs = torch.empty(min(rows, n), k * (l + 1), dtype=dt, device=dev)
    xc_buf = torch.empty(min(rows, n), d, dtype=dt, device=dev)  # reused by every block
    sq_buf = torch.empty_like(xc_buf)
    for i in range(0, n, rows):
        xb = x[i : i + rows].to(dt)
        m = xb.shape[0]
        xc = torch.sub(xb, gauss.shift, out=xc_buf[:m])
        sq = torch.mul(xc, xc, out=sq_buf[:m])
        joint, y_raw = gauss.evaluate_shifted(xc, sq)
        if resp_gauss is not None:
            sub = xb[:, resp_index] - resp_gauss.shift
            joint, _ = resp_gauss.evaluate_shifted(sub)
        joint += log_weights
        lse = torch.logsumexp(joint, 1)
        log_r = joint.sub_(lse[:, None])
        r = log_r.masked_fill_(log_r < LOG_RESP_FLOOR, -math.inf).exp_()  # [m, K]
        ll[i : i + m] = lse
        best[i : i + m] = r.argmax(1)
        out = rhs[:m]
        torch.mul(y_raw, r.unsqueeze(-1), out=out[:, : k * l].view(m, k, l))
        out[:, k * l :] = r
        both.addmm_(out.T, xc)
        if isotropic:
            s2.addmm_(r.T, sq.sum(1, keepdim=True))
        else:
            s2.addmm_(r.T, sq)
        s0 += r.sum(0)
    both = both.double()
    stats.t += both[: k * l].view(k, l, d).transpose(1, 2)
    stats.s1 += both[k * l :]
    stats.s2 += s2.double()
    stats.s0 += s0.double()
    stats.log_lik += ll.double().sum()
    stats.count += n
    if stats.num_worst:
        idx = torch.topk(ll, min(stats.num_worst, n), largest=False).indices
        stats.add_worst(x[idx].to(dt), ll[idx], best[idx])
    return ll


@torch.no_grad()
def m_step(
    stats: SufficientStats,
    gauss: LowRankGaussians,
    noise: str,
    noise_floor: float = 1e-6,
    min_count: float = 1e-3,
    reseed: bool = True,
    noise_reg: float = 0.0,
) -> dict[str, Tensor]:
    """Closed-form M-step from the statistics gathered under `gauss` (the old parameters).

    The new noise variances are max(estimate + noise_reg, noise_floor): `noise_reg` is
    scikit-learn's `reg_covar` (added), `noise_floor` a hard lower bound.

    Returns float64 tensors: means [K, d], factors [K, d, l], noise_variance [K, d] or
    [K, 1], weights [K], and `reseeded` (bool [K], components re-seeded because their
    responsibility mass was below `min_count`).

    The [K, l+1, l+1] (diagonal) or [K, l, l] (isotropic) systems are symmetric positive
    definite and solved by Cholesky. Statistics with NaN/inf raise `NonFiniteError`, a
    system that is not positive definite `SingularCovarianceError`; both name the
    components, and nothing is solved before the check.
    """
    _check_finite_stats(stats)
    f64 = torch.float64
    k, d, l = gauss.n_components, gauss.dim, gauss.rank
    shift = gauss.shift.to(f64)
    chol = gauss.chol.to(f64)
    v = gauss.proj.to(f64) @ chol.transpose(1, 2)  # D^-1 A  [K, d, l]
    a_old = gauss.factors.to(f64)
    mu_t = gauss.means.to(f64) - shift
    s0_raw, s1, s2 = stats.s0, stats.s1, stats.s2
    empty = s0_raw < min_count
    s0 = torch.where(empty, torch.ones_like(s0_raw), s0_raw)  # keep the algebra finite
    t = stats.t @ chol.transpose(1, 2)  # sum r x~ x~^T D^-1 A
    linv = torch.cholesky_inverse(chol)  # L^-1 = Cov[z | x]
    eye = torch.eye(l, dtype=f64, device=s0.device)

    if noise == "diagonal":  # Ghahramani & Hinton: joint update of [A, mu]
        a = torch.einsum("kd,kdl->kl", mu_t, v)
        vs1 = torch.einsum("kd,kdl->kl", s1, v)
        sxez = (t - s1.unsqueeze(-1) * a.unsqueeze(1)) @ linv  # sum r x~ E[z]^T
        sez = torch.einsum("kij,kj->ki", linv, vs1 - s0_raw[:, None] * a)  # sum r E[z]
        q0 = v.transpose(1, 2) @ t - vs1.unsqueeze(-1) * a.unsqueeze(1)
        q0 = (
            q0
            - a.unsqueeze(-1) * vs1.unsqueeze(1)
            + s0_raw[:, None, None] * a.unsqueeze(-1) * a.unsqueeze(1)
        )
        sezz = s0_raw[:, None, None] * linv + linv @ q0 @ linv  # sum r E[z z^T]
        sezz = 0.5 * (sezz + sezz.transpose(1, 2))  # t is a float32 sum: not exactly symmetric
        g = torch.zeros(k, l + 1, l + 1, dtype=f64, device=s0.device)
        g[:, :l, :l] = sezz
        g[:, :l, l] = sez
        g[:, l, :l] = sez
        g[:, l, l] = s0_raw
        g[empty] = torch.eye(l + 1, dtype=f64, device=s0.device)
        h = torch.cat([sxez, s1.unsqueeze(-1)], dim=2)  # [K, d, l+1]
        chol_g = _spd_cholesky(lambda _: g, "the M-step's sum_n r_nk E[(z, 1)(z, 1)^T]")
        # H G^-1 through the small inverse: one GEMM, 2-4x faster on CPUs than the
        # triangular solves of cholesky_solve with d right-hand sides
        at = h @ torch.cholesky_inverse(chol_g)
        factors = at[..., :l]
        means = at[..., l]
        var = (s2 - (at * h).sum(-1)) / s0[:, None]
    else:  # Tipping & Bishop MPPCA
        sig2 = torch.exp(gauss.log_noise.to(f64))[:, 0]  # [K]
        means = s1 / s0[:, None]
        w = a_old
        mw = torch.einsum("kd,kdl->kl", means, w)
        sw = t * (sig2 / s0)[:, None, None] - means.unsqueeze(-1) * mw.unsqueeze(1)  # S W
        wsw = w.transpose(1, 2) @ sw
        wsw = 0.5 * (wsw + wsw.transpose(1, 2))  # symmetric up to the float32 rounding of t
        minv = linv / sig2[:, None, None]  # M^-1 = (sigma^2 I + W^T W)^-1
        # (sigma^2 I + M^-1 W^T S W)^-1 = B^-1 M, with B = sigma^2 M + W^T S W SPD
        m_mat = sig2[:, None, None] * eye + w.transpose(1, 2) @ w
        chol_b = _spd_cholesky(
            lambda _: sig2[:, None, None] * m_mat + wsw, "the M-step's sigma^2 M + W^T S W"
        )
        factors = sw @ torch.cholesky_solve(m_mat, chol_b)
        tr_s = s2[:, 0] / s0 - means.square().sum(1)
        var = ((tr_s - ((sw @ minv) * factors).sum((1, 2))) / d)[:, None]

    var = (torch.nan_to_num(var, nan=noise_floor) + noise_reg).clamp_min(noise_floor)
    means = means + shift
    weights = s0_raw.clamp_min(0) / stats.count.clamp_min(1e-300)
    # components without data keep their old parameters unless re-seeded
    old_var = torch.exp(gauss.log_noise.to(f64))
    means = torch.where(empty[:, None], gauss.means.to(f64), means)
    factors = torch.where(empty[:, None, None], a_old, factors)
    var = torch.where(empty[:, None], old_var, var)
    reseeded = torch.zeros(k, dtype=torch.bool, device=s0.device)
    if reseed and empty.any() and len(stats.worst_ll):
        idx = torch.nonzero(empty).flatten()
        cand = torch.arange(len(idx), device=idx.device) % len(stats.worst_ll)
        donors = stats.worst_comp[cand]
        means[idx] = stats.worst_x[cand].to(f64)
        factors[idx] = factors[donors]
        var[idx] = var[donors]
        shares = torch.bincount(donors, minlength=k).to(f64)
        weights[idx] = weights[donors] / (1 + shares[donors])
        weights = torch.where(shares > 0, weights / (1 + shares), weights)
        reseeded[idx] = True
    weights = weights.clamp_min(1e-30)
    return {
        "means": means,
        "factors": factors,
        "noise_variance": var,
        "weights": weights / weights.sum(),
        "reseeded": reseeded,
    }


def _check_finite_stats(stats: SufficientStats) -> None:
    """`NonFiniteError` naming the components whose statistics hold NaN or inf."""
    bad = ~stats.s0.isfinite()
    for s in (stats.s1, stats.s2, stats.t):
        bad |= ~s.isfinite().flatten(1).all(1)
    if bool(bad.any()):
        raise NonFiniteError(
            f"the EM statistics of component {describe_indices(bad)} hold NaN or inf, so "
            "the M-step cannot update them. Check the data for NaN/inf values or values "
            "beyond float32's range."
        )


def _spd_cholesky(build, what: str) -> Tensor:
    """[K, n, n] Cholesky factors of the M-step's float64 SPD matrices (never an LU: see
    `gmlab.ops.linalg`); `SingularCovarianceError` names the failing components."""
    return cholesky_float64_retry(
        build,
        torch.float64,
        what=f"{what} of component",
        remedy="Its statistics are degenerate: raise the noise floor or lower the latent "
        "dimension.",
    )


# ------------------------------------------------------------- initialisation
def small_sample_ppca(
    x: Tensor, n_factors: int, noise_floor: float = 1e-6, center: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form PPCA of K small samples at once (torch-mfa's `_small_sample_ppca`).

    Args:
        x: [K, m, d] m points per component.
        n_factors: l.
        center: [K, d] means to use instead of the sample means.

    Returns:
        means [K, d], factors [K, d, l], sigma^2 [K]. Directions the sample cannot
        resolve (m - 1 < l) get small random factors, so EM can still grow them.
    """
    k, m, d = x.shape
    l = n_factors
    mu = x.mean(1) if center is None else center
    xc = x - mu[:, None, :]
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)  # s [K, r], vh [K, r, d]
    r = s.shape[1]
    denom = max(m - 1, 1)
    lam = s.square() / denom  # [K, r] sample eigenvalues
    rest = lam[:, l:].sum(1) if r > l else torch.zeros(k, dtype=x.dtype, device=x.device)
    sigma2 = (rest * denom / (denom * max(d - l, 1))).clamp_min(noise_floor)
    # any leftover variance (sample of one point etc.) keeps sigma^2 positive
    sigma2 = torch.maximum(sigma2, 1e-3 * lam.sum(1) / d).clamp_min(noise_floor)
    lt = min(l, r)
    scale = (lam[:, :lt] - sigma2[:, None]).clamp_min(0.05 * sigma2[:, None]).sqrt()
    factors = torch.zeros(k, d, l, dtype=x.dtype, device=x.device)
    factors[:, :, :lt] = vh[:, :lt].transpose(1, 2) * scale[:, None, :]
    if lt < l:  # unresolved directions: random, at the noise scale
        g = torch.Generator(device=x.device).manual_seed(0)
        extra = torch.randn(k, d, l - lt, generator=g, device=x.device, dtype=x.dtype)
        factors[:, :, lt:] = extra * (0.1 * sigma2 / d).sqrt()[:, None, None]
    return mu, factors, sigma2


def _pick(n: int, size: int, generator: torch.Generator, device) -> Tensor:
    """`size` indices into range(n): without replacement when possible."""
    if size <= n:
        return torch.randperm(n, generator=generator, device=device)[:size]
    return torch.randint(n, (size,), generator=generator, device=device)


def init_rnd_samples(
    x: Tensor,
    n_components: int,
    n_factors: int,
    noise_floor: float = 1e-6,
    samples_per_component: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """torch-mfa's `rnd_samples` init: PPCA of 2(l+1) random points per component.

    Returns means, factors, noise_variance [K, 1], weights (uniform).
    """
    k, l = n_components, n_factors
    m = samples_per_component or 2 * (l + 1)
    g = torch.Generator(device=x.device).manual_seed(seed)
    idx = _pick(x.shape[0], k * m, g, x.device)
    groups = x[idx].reshape(k, m, -1).to(torch.float64)
    mu, factors, sigma2 = small_sample_ppca(groups, l, noise_floor)
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64, device=x.device)
    return {"means": mu, "factors": factors, "noise_variance": sigma2[:, None], "weights": weights}


def init_kmeans(
    x: Tensor,
    n_components: int,
    n_factors: int,
    noise_floor: float = 1e-6,
    samples_per_component: int | None = None,
    seed: int = 0,
    n_iter: int = 20,
) -> dict[str, Tensor]:
    """k-means++ / Lloyd clusters -> means = centers, weights = cluster fractions,
    factors = PPCA of up to `samples_per_component` members per cluster (batched),
    diagonal noise = the cluster's per-coordinate variance left over by the factors.

    Returns means, factors, noise_variance [K, d], weights.
    """
    from gmlab.ops.kmeans import kmeans

    k, l = n_components, n_factors
    n, d = x.shape
    xf = x.to(torch.float32) if not x.is_floating_point() else x
    centers, labels = kmeans(xf, k, n_iter=n_iter, seed=seed)
    f64 = torch.float64
    counts = torch.bincount(labels, minlength=k).to(f64)
    onehot = torch.zeros(n, k, dtype=f64, device=x.device)
    onehot[torch.arange(n, device=x.device), labels] = 1.0
    x64 = xf.to(f64)
    safe = counts.clamp_min(1)[:, None]
    means = torch.where(counts[:, None] > 0, (onehot.T @ x64) / safe, centers.to(f64))
    var = ((onehot.T @ x64.square()) / safe - means.square()).clamp_min(0)
    # m members of each cluster, drawn with replacement (clusters may be tiny or empty)
    m = samples_per_component or max(2 * (l + 1), 4 * l)
    g = torch.Generator(device=x.device).manual_seed(seed + 1)
    order = torch.argsort(labels)
    start = torch.cumsum(counts, 0) - counts
    u = torch.rand(k, m, generator=g, device=x.device, dtype=f64)
    pos = (start[:, None] + (u * counts[:, None]).floor()).long().clamp_max(n - 1)
    members = x64[order[pos]]  # [K, m, d]
    lonely = counts == 0
    if lonely.any():  # empty clusters: random points
        members[lonely] = x64[_pick(n, int(lonely.sum()) * m, g, x.device)].view(-1, m, d)
    _, factors, sigma2 = small_sample_ppca(members, l, noise_floor, center=means)
    noise = (var - factors.square().sum(-1)).clamp_min(0.1 * sigma2[:, None])
    noise = torch.maximum(noise, 0.05 * var).clamp_min(noise_floor)
    weights = (counts + 1e-3) / (n + 1e-3 * k)
    return {"means": means, "factors": factors, "noise_variance": noise, "weights": weights}
