"""The importance-weighted bound: chunking, ordering, and convergence to an exact marginal."""

import math

import pytest
import torch
from support.parts import mlp_parts

from gmlab.metrics.iwae import iwae_bound
from gmlab.models.vae import VAE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_chunked_bound_equals_one_shot_logsumexp():
    torch.manual_seed(0)
    weights = 5.0 * torch.randn(103, 4)
    state = {"at": 0}

    def draw(n):
        out = weights[state["at"] : state["at"] + n]
        state["at"] += n
        return out

    got = iwae_bound(draw, k=103, chunk_size=10)
    torch.testing.assert_close(got, torch.logsumexp(weights, 0) - math.log(103))
    assert state["at"] == 103


def linear_gaussian_vae(offset: float = 0.7) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """p(z) = N(0, I_2), p(x|z) = N(Wz + b, I_3), so p(x) = N(b, W W^T + I) exactly.
    The encoder is the exact posterior mean with a deliberately wrong (diagonal, widened)
    variance, so the ELBO is loose and only the IWAE bound can close the gap."""
    torch.manual_seed(0)
    vae = VAE(data_shape=(3,), latent_dim=2, **mlp_parts([]))
    w = torch.tensor([[1.5, -0.5], [0.3, 2.0], [-1.0, 0.8]])
    b = torch.tensor([0.5, -1.0, 2.0])
    cov_post = torch.linalg.inv(torch.eye(2) + w.T @ w)
    gain = cov_post @ w.T  # posterior mean = gain (x - b)
    dec, enc = vae.decoder[0], vae.encoder[0]
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        enc.weight.zero_()
        enc.weight[:2] = gain
        enc.bias[:2] = -gain @ b
        enc.bias[2:] = torch.log(torch.diagonal(cov_post)) + offset
    return vae, w, b


def test_iwae_converges_to_the_exact_marginal_of_a_linear_gaussian_model():
    vae, w, b = linear_gaussian_vae()
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + torch.eye(3))
    torch.manual_seed(1)
    x = marginal.sample((64,))
    exact = marginal.log_prob(x)
    gaps = {}
    with torch.no_grad():
        for k in (1, 10, 100, 5000):
            gaps[k] = (exact - vae.iwae_bound(x, k)).mean().item()
        elbo_gap = (exact - vae.elbo(x)).mean().item()
    assert gaps[1] > 0.15 and elbo_gap > 0.15  # the posterior is really wrong
    assert gaps[1] > gaps[10] > gaps[100] > gaps[5000] > -0.005
    assert gaps[5000] < 0.005


def toy_model() -> tuple[VAE, torch.Tensor]:
    """A VAE briefly trained on a noisy ring: its posteriors are far from Gaussian."""
    torch.manual_seed(0)
    t = torch.rand(512) * 2 * math.pi
    data = 3 * torch.stack([t.cos(), t.sin()], 1) + 0.2 * torch.randn(512, 2)
    vae = VAE(data_shape=(2,), latent_dim=2, **mlp_parts([32, 32]))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        (-vae.elbo(data).mean()).backward()
        opt.step()
    return vae, data[:400]


def test_iwae_is_above_the_elbo_and_increases_with_k_on_a_trained_toy_model():
    vae, x = toy_model()
    torch.manual_seed(2)
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x) for _ in range(20)]).mean()
        bounds = {
            k: torch.stack([vae.iwae_bound(x, k) for _ in range(20)]).mean() for k in (1, 5, 50)
        }
    assert abs(bounds[1] - elbo) < 0.03  # L_1 is the ELBO (MC KL vs analytic KL)
    assert bounds[50] > bounds[5] + 0.02 > bounds[1] + 0.07
