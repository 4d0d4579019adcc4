"""MADE masks and the VLAE flow: autoregressive structure, exact inverse, log-det."""

import torch
from torch.autograd.functional import jacobian

from gmlab.nn.made import MADE, MADEFlow


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


def test_made_jacobian_is_strictly_lower_triangular():
    torch.manual_seed(0)
    d = 6
    made = MADE(d, hidden=(32, 32), num_outputs=2).double()
    randomize(made)
    x = torch.randn(d, dtype=torch.float64)
    jac = jacobian(lambda v: made(v[None])[0], x)  # [2, d, d]: d out[g, i] / d x[j]
    upper = torch.triu(torch.ones(d, d, dtype=torch.bool))  # j >= i must not matter
    for g in range(2):
        assert jac[g][upper].abs().max() == 0
        # and the mask is not trivially zero: each output i > 1 sees some earlier input
        assert (jac[g].abs().sum(1)[1:] > 0).all()


def test_made_flow_inverts_exactly_and_log_det_matches_autograd():
    torch.manual_seed(1)
    d = 5
    flow = MADEFlow(d, hidden=(24, 24)).double()
    randomize(flow, seed=1, scale=0.4)
    z = torch.randn(7, d, dtype=torch.float64)
    eps, log_det = flow(z)
    assert not torch.allclose(eps, z)  # a non-trivial map
    z_back, inv_log_det = flow.inverse(eps)
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(inv_log_det, -log_det, atol=1e-10, rtol=0)
    for b in range(z.shape[0]):
        jac = jacobian(lambda v: flow(v[None])[0][0], z[b])
        assert torch.triu(jac, 1).abs().max() == 0  # eps_i depends on z_<=i only
        torch.testing.assert_close(log_det[b], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=0)


def test_made_flow_starts_as_identity():
    flow = MADEFlow(4, hidden=(16, 16))
    z = torch.randn(3, 4)
    eps, log_det = flow(z)
    torch.testing.assert_close(eps, z)
    assert log_det.abs().max() == 0
