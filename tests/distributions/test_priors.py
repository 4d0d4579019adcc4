"""Priors and likelihoods against torch.distributions and analytic references."""

import math

import pytest
import torch
from torch import distributions as D

from gmlab.distributions.likelihoods import (
    BernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    EventSpace,
    GaussianLikelihood,
)
from gmlab.distributions.priors import MixturePrior, NormalPrior


@pytest.mark.parametrize("learn_weights", [False, True])
def test_mixture_log_prob_equals_mixture_same_family(learn_weights):
    torch.manual_seed(0)
    prior = MixturePrior(dim=5, n_components=30, learn_weights=learn_weights)
    with torch.no_grad():
        prior.logvars.copy_(0.5 * torch.randn(30, 5))
        if learn_weights:
            prior.logits.copy_(torch.randn(30))
    ref = D.MixtureSameFamily(
        D.Categorical(logits=prior.logits.detach()),
        D.Independent(D.Normal(prior.means.detach(), (0.5 * prior.logvars.detach()).exp()), 1),
    )
    z = 2.0 * torch.randn(200, 5)
    torch.testing.assert_close(prior.log_prob(z), ref.log_prob(z), atol=1e-4, rtol=1e-5)


def test_mixture_sampling_matches_its_moments():
    torch.manual_seed(1)
    prior = MixturePrior(dim=2, n_components=3, learn_weights=True)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-4.0, 0.0], [0.0, 3.0], [5.0, 5.0]]))
        prior.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    z = prior.sample(100_000)
    pi = torch.softmax(prior.logits.detach(), 0)
    torch.testing.assert_close(z.mean(0), pi @ prior.means.detach(), atol=0.05, rtol=0)


def test_monte_carlo_kl_matches_analytic_kl_for_one_component():
    torch.manual_seed(2)
    prior = MixturePrior(dim=4, n_components=1)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[0.5, -1.0, 0.0, 2.0]]))
        prior.logvars.copy_(torch.tensor([[0.3, -0.5, 0.0, 1.0]]))
    mu, logvar = torch.randn(3, 4), 0.5 * torch.randn(3, 4)
    analytic = prior.component_kl(mu, logvar)[:, 0]
    q = D.Independent(D.Normal(mu, (0.5 * logvar).exp()), 1)
    p = D.Independent(D.Normal(prior.means[0].detach(), (0.5 * prior.logvars[0].detach()).exp()), 1)
    torch.testing.assert_close(analytic.detach(), D.kl_divergence(q, p), atol=1e-5, rtol=1e-5)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - prior.log_prob(z.reshape(-1, 4)).view(200_000, 3)).mean(0)
    torch.testing.assert_close(mc.detach(), analytic.detach(), atol=0.02, rtol=0)
    # with one component Rui Shu's VAE-MoG approximation is exact
    torch.testing.assert_close(prior.approx_kl(mu, logvar), analytic, atol=1e-5, rtol=0)


def test_normal_prior_kl_and_log_prob():
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    q = D.Normal(mu, (0.5 * logvar).exp())
    ref = D.kl_divergence(q, D.Normal(torch.zeros(3), torch.ones(3)))
    torch.testing.assert_close(NormalPrior(3).analytic_kl(mu, logvar), ref, atol=1e-5, rtol=1e-5)
    z = torch.randn(10, 3)
    ref_lp = D.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(NormalPrior(3).log_prob(z), ref_lp)


def test_priors_offer_only_their_kl_options():
    assert NormalPrior(2).has_analytic_kl and not NormalPrior(2).has_approx_kl
    mog = MixturePrior(2, n_components=3)
    assert mog.has_approx_kl and not mog.has_analytic_kl
    with pytest.raises(NotImplementedError, match="no analytic KL"):
        mog.analytic_kl(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="n_components"):
        MixturePrior(2, n_components=0)


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(4)
    params = torch.randn(5, 2, 3, 4, 4)
    x = torch.rand(5, 3, 4, 4)
    lik = GaussianLikelihood(EventSpace(3), learn_variance=True)
    ref = D.Normal(params[:, 0], (0.5 * params[:, 1]).exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, params), ref)
    fixed = GaussianLikelihood(EventSpace(3), learn_variance=False, std=1.0)
    ref = D.Normal(params[:, 0], 1.0).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(fixed.log_prob(x, params[:, :1]), ref)
    xb = torch.bernoulli(x)
    ref = D.Bernoulli(logits=params[:, 0]).log_prob(xb).flatten(1).sum(1)
    torch.testing.assert_close(BernoulliLikelihood(EventSpace(3)).log_prob(xb, params[:, :1]), ref)


@pytest.mark.parametrize("low", [0.0, -1.0])
def test_discretized_logistic_masses_sum_to_one(low):
    levels = 16
    lik = DiscretizedLogisticLikelihood(EventSpace(1, low=low, high=1.0, num_levels=levels))
    width = (1.0 - low) / levels
    centres = low + (torch.arange(levels) + 0.5) * width  # one input per bin
    for mean, log_scale in [(0.3, -2.0), (0.9, -6.0), (low, 0.5)]:
        params = torch.tensor([mean, log_scale]).view(1, 2, 1).expand(levels, 2, 1)
        log_density = lik.log_prob(centres[:, None], params)
        log_mass = log_density + math.log(width)
        assert abs(torch.logsumexp(log_mass, 0).item()) < 1e-4
