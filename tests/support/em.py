"""One E-step over a tensor, for EM tests."""

from __future__ import annotations

from gmlab.distributions.mfa import SufficientStats, e_step


def stats_of(m, x, batch=None, **kw):
    """(precomputed Gaussians, sufficient statistics) of the mixture `m` on x [N, d],
    accumulated batch by batch on x's device; `kw` goes to `e_step`."""
    g = m.gaussians()
    st = SufficientStats.zeros(
        m.n_components, m.dim, m.n_factors, m.noise == "isotropic", device=x.device
    )
    batch = batch or len(x)
    for i in range(0, len(x), batch):
        e_step(x[i : i + batch], g, m.log_weights.detach(), st, **kw)
    return g, st
