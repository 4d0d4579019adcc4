"""The VAE's importance-weighted training objectives (iwae, dreg) against torch.distributions
and against each other."""

from __future__ import annotations

import math

import pytest
import torch
from support.parts import mlp_parts, part
from support.trainer import quiet_trainer

from gmlab.data import DigitsDataModule
from gmlab.distributions.normal import diag_normal_rsample, diag_normal_rsample_stop
from gmlab.errors import ConfigError
from gmlab.models.vae import VAE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits_vae(seed: int = 0, **kw) -> VAE:
    torch.manual_seed(seed)
    args = dict(
        data_shape=(1, 8, 8),
        preprocess={"binarize": "dynamic"},
        latent_dim=4,
        **mlp_parts([32]),
        likelihood=part("likelihood", "bernoulli"),
        prior=part("prior", "normal"),
        optimizer=part("optimizer", "adam", lr=3e-3),
        eval={"iwae_k": 20},
    )
    return VAE(**{**args, **kw})


def digit_batch(n: int = 16) -> torch.Tensor:
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    dm.setup()
    return dm.tensors("val")[0][:n]


def test_stopped_draw_has_the_plain_values_and_only_the_path_gradient():
    mu = torch.randn(5, 3, requires_grad=True)
    logvar = torch.randn(5, 3, requires_grad=True)
    torch.manual_seed(1)
    z, log_q = diag_normal_rsample_stop(mu, logvar, 4)
    torch.manual_seed(1)
    z_ref, log_q_ref = diag_normal_rsample(mu, logvar, 4)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(log_q, log_q_ref)
    grads = torch.autograd.grad(log_q.sum(), (mu, logvar))
    fixed = torch.distributions.Normal(mu.detach(), (0.5 * logvar.detach()).exp())
    ref = torch.autograd.grad(fixed.log_prob(z_ref).sum(), (mu, logvar))
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo():
    x = digit_batch()
    losses = []
    for kw in ({"kl": "mc"}, {"objective": "iwae"}, {"objective": "dreg"}):
        model = digits_vae(**kw)
        torch.manual_seed(3)
        losses.append(model.training_step((x, None), 0))
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(losses[2], losses[0])


@pytest.mark.parametrize("objective", ["iwae", "dreg"])
def test_the_loss_is_minus_the_importance_weighted_bound_of_its_draws(objective):
    x, k = digit_batch(), 5
    model = digits_vae(objective=objective, train_k=k)
    torch.manual_seed(3)
    loss = model.training_step((x, None), 0)
    torch.manual_seed(3)
    with torch.no_grad():
        xb = model.prepare(x, train=True)[0]
        mu, logvar = model.encode(xb)
        z, _ = diag_normal_rsample(mu, logvar, k)
        logits = model.decoder(z.reshape(-1, 4)).view(k, *xb.shape)
        log_px = torch.distributions.Bernoulli(logits=logits).log_prob(xb).flatten(2).sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
        bound = torch.logsumexp(log_px + log_pz - log_q, 0) - math.log(k)
    torch.testing.assert_close(loss.detach(), -bound.mean(), atol=1e-3, rtol=1e-5)


def gradients(model: VAE, x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(seed)
    model.importance_weighted_loss(model.prepare(x, train=True)[0])[0].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dreg_has_the_iwae_decoder_gradient_and_its_encoder_gradient_in_expectation():
    """Same draws: identical decoder gradients. Encoder: over 8 groups of 2000 copies of
    4 digits, the group means of the encoder's output layer agree within their standard
    errors, and DReG's scatter is smaller. (Without the extra weight the stopped-q
    estimator is biased for k > 1.)"""
    k, groups = 8, 8
    x = digit_batch(4).repeat(2000, 1, 1, 1)
    iwae, dreg = digits_vae(objective="iwae", train_k=k), digits_vae(objective="dreg", train_k=k)
    g_iwae = [gradients(iwae, x, seed) for seed in range(groups)]
    g_dreg = [gradients(dreg, x, seed) for seed in range(groups)]
    for name in g_iwae[0]:
        if name.startswith("decoder"):
            torch.testing.assert_close(g_dreg[0][name], g_iwae[0][name], atol=1e-5, rtol=1e-4)
    name = "encoder.2.weight"  # the (mu, logvar) layer
    a = torch.stack([g[name].flatten() for g in g_iwae])  # [groups, P]
    b = torch.stack([g[name].flatten() for g in g_dreg])
    se = ((a.var(0) + b.var(0)) / groups).sqrt()
    z = (a.mean(0) - b.mean(0)).abs() / se  # |t| statistics: median ~0.7 when unbiased
    assert z.median() < 2.0  # the stopped-q estimator without the extra weight: ~20
    assert b.var(0).sum() < a.var(0).sum()


def test_dreg_training_raises_the_validation_bound():
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    dm.setup()
    x_val = dm.tensors("val")[0]
    model = digits_vae(objective="dreg", train_k=4)

    def val_bound():
        torch.manual_seed(1)
        with torch.no_grad():
            return model.iwae_bound(x_val, 10).mean().item()

    before = val_bound()
    quiet_trainer(max_epochs=3).fit(model, datamodule=dm)
    assert val_bound() > before + 5.0


def test_bad_objective_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="model.objective must be one of"):
        digits_vae(objective="vimco")
    with pytest.raises(ConfigError, match="model.train_k must be >= 1"):
        digits_vae(objective="iwae", train_k=0)
    with pytest.raises(ConfigError, match="train_k > 1 needs model.objective=iwae or dreg"):
        digits_vae(train_k=5)
    with pytest.raises(ConfigError, match="neither model.kl=analytic"):
        digits_vae(objective="dreg", train_k=5, kl="analytic")
    with pytest.raises(ConfigError, match="model.free_bits > 0"):
        digits_vae(objective="iwae", train_k=5, free_bits=0.5)
