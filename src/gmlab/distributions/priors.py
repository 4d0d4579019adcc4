"""Priors p(z) of the VAE family over R^dim: the base interface, N(0, I) and the learned
mixture of diagonal Gaussians. Priors built on networks (MADE flow, VampPrior) live in
`gmlab.nn.network_priors`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gmlab.distributions.normal import LOG_2PI, std_normal_log_prob


@dataclass(frozen=True)
class EncoderAccess:
    """What a prior may use of the model's encoder.

    Attributes:
        encode: model-space inputs [K, *input_shape] -> posterior (mu, logvar), each [K, dim].
        input_shape: shape of one model-space input.
        low, high: the model-space range of the inputs.
    """

    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    input_shape: tuple[int, ...]
    low: float = 0.0
    high: float = 1.0


class Prior(nn.Module):
    """A density over R^dim: `log_prob(z [N, dim]) -> [N]`, `sample(n) -> [n, dim]`.

    The model calls `attach(EncoderAccess)` once, right after building the prior and before
    loading any weights; a prior that depends on the encoder (the VampPrior) keeps it, the
    others ignore it. KL options a prior offers beyond the Monte Carlo estimate
    log q(z|x) - log p(z) are flagged by `has_analytic_kl` (`analytic_kl`: [B, dim]) and
    `has_approx_kl` (`approx_kl`: [B]).
    """

    has_analytic_kl: bool = False
    has_approx_kl: bool = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def standard_normal(self, n: int) -> torch.Tensor:
        """[n, dim] N(0, I) draws on the prior's device, in its dtype (float64 once the
        model is converted with `.double()`)."""
        return torch.randn(n, self.dim, device=self.device, dtype=self._anchor.dtype)

    def attach(self, encoder: EncoderAccess) -> None:
        """Receive the model's encoder (default: unused)."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def analytic_kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no analytic KL")

    def approx_kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no approximate KL")


class NormalPrior(Prior):
    """N(0, I) over R^dim, with the analytic KL of a diagonal Gaussian to it.

    >>> import torch
    >>> z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    >>> reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    >>> torch.allclose(NormalPrior(2).log_prob(z), reference)
    True
    """

    has_analytic_kl = True

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return std_normal_log_prob(z)

    def sample(self, n: int) -> torch.Tensor:
        return self.standard_normal(n)

    def analytic_kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """[B, D] KL(N(mu, exp(logvar)) || N(0, 1)) per dimension."""
        return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


# --------------------------------------------------------- diagonal Gaussian mixtures
def quadratic_form(means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """[K, D] means and log-variances -> [K, 2D + 1] rows w_k with
    [z^2, z, 1] . w_k = (z - m_k)^T V_k^-1 (z - m_k) + log|V_k| + D log(2 pi)
    = -2 log N(z; m_k, V_k), V_k = diag(exp(logvars_k))."""
    prec = torch.exp(-logvars)
    const = (means.square() * prec).sum(-1) + logvars.sum(-1) + means.shape[-1] * LOG_2PI
    return torch.cat([prec, -2.0 * means * prec, const[:, None]], dim=1)


def _against_components(form, square, linear, bias, alpha: float) -> torch.Tensor:
    """[N, K] bias + alpha [square, linear, 1] . w_k, one addmm (w = `quadratic_form`)."""
    features = torch.cat([square, linear, linear.new_ones(linear.shape[0], 1)], dim=1)
    return torch.addmm(bias, features, form.T, alpha=alpha)


def component_log_probs(
    z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """[N, D] -> [N, K] log N(z; m_k, diag exp(logvars_k)) (+ offset [K]), as one matrix
    product of the features [z^2, z, 1] with `quadratic_form` (no [N, K, D] tensor)."""
    bias = z.new_zeros(means.shape[0]) if offset is None else offset
    return _against_components(quadratic_form(means, logvars), z.square(), z, bias, alpha=-0.5)


def mixture_log_prob(
    z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """[N] log sum_k pi_k N(z; m_k, diag exp(logvars_k)), log pi = `log_weights` [K]."""
    return torch.logsumexp(component_log_probs(z, means, logvars, log_weights), -1)


def component_kls(
    mu: torch.Tensor, logvar: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor
) -> torch.Tensor:
    """[N, K] KL(N(mu, exp(logvar)) || N(m_k, exp(logvars_k))) for every component:
    0.5 (E_q[-2 log N(z; m_k, V_k)] - log|S| - D (log 2 pi + 1)), S = diag(exp(logvar))."""
    bias = -logvar.sum(-1, keepdim=True) - mu.shape[-1] * (LOG_2PI + 1.0)
    form = quadratic_form(means, logvars)
    return 0.5 * _against_components(form, mu.square() + logvar.exp(), mu, bias, alpha=1.0)


def sample_mixture(
    n: int, means: torch.Tensor, logvars: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """[n, D] draws: a component k ~ pi, then N(m_k, diag exp(logvars_k))."""
    k = torch.multinomial(log_weights.exp(), n, replacement=True)
    eps = torch.randn(n, means.shape[1], device=means.device, dtype=means.dtype)
    return means[k] + torch.exp(0.5 * logvars[k]) * eps


class MixturePrior(Prior):
    """sum_k pi_k N(m_k, diag(v_k)): K learned means and log-variances, uniform or learned
    weights (Rui Shu's MoG-prior VAE); exact log-density by logsumexp over the components.

    Args:
        dim: latent size D.
        n_components: K.
        learn_weights: learn the mixture logits (else uniform 1/K).
        init_scale: means start as init_scale * N(0, I); log-variances start at 0.

    The same density as torch's `MixtureSameFamily` of diagonal Gaussians:

    >>> import torch
    >>> D = torch.distributions
    >>> _ = torch.manual_seed(0)
    >>> prior = MixturePrior(dim=2, n_components=3)
    >>> _ = prior.logvars.data.normal_()  # as if trained
    >>> components = D.Independent(D.Normal(prior.means, (0.5 * prior.logvars).exp()), 1)
    >>> mixture = D.MixtureSameFamily(D.Categorical(logits=prior.logits), components)
    >>> z = prior.sample(4)
    >>> z.shape, torch.allclose(prior.log_prob(z), mixture.log_prob(z), atol=1e-5)
    (torch.Size([4, 2]), True)
    """

    has_approx_kl = True

    def __init__(
        self, dim: int, n_components: int = 1000, learn_weights: bool = False, init_scale=1.0
    ) -> None:
        super().__init__(dim)
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = int(n_components)
        self.means = nn.Parameter(init_scale * torch.randn(self.n_components, self.dim))
        self.logvars = nn.Parameter(torch.zeros(self.n_components, self.dim))
        self.logits = nn.Parameter(
            torch.zeros(self.n_components), requires_grad=bool(learn_weights)
        )

    @property
    def log_weights(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, 0)

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, K] log N(z; m_k, diag v_k)."""
        return component_log_probs(z, self.means, self.logvars)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.means, self.logvars, self.log_weights)

    def sample(self, n: int) -> torch.Tensor:
        return sample_mixture(n, self.means, self.logvars, self.log_weights)

    def component_kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """[N, K] analytic KL(N(mu, exp(logvar)) || N(m_k, v_k)) for every component."""
        return component_kls(mu, logvar, self.means, self.logvars)

    def approx_kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """[N] Rui Shu's approximation KL(q || sum pi_j p_j) ~ -log sum_j pi_j exp(-KL(q||p_j))."""
        return -torch.logsumexp(self.log_weights - self.component_kl(mu, logvar), -1)


def uniform_log_weights(k: int, like: torch.Tensor) -> torch.Tensor:
    """[k] log(1/k) on `like`'s device and dtype."""
    return torch.full((k,), -math.log(k), device=like.device, dtype=like.dtype)
