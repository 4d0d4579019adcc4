"""GaussianMixtureClassifier against torch.distributions, the linear-classifier identity,
gradient flow, the Achlioptas projection and bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.devices import DEVICES
from torch.distributions import MultivariateNormal

from gmlab.errors import ConfigError, ShapeError
from gmlab.nn.gmm_layer import GaussianMixtureClassifier, achlioptas_matrix

COVARIANCES = ["diag", "tril", "full", "lowrank"]


def randomized_layer(cov: str, in_features=7, n_classes=3, g=2, dim=None, seed=0):
    """A float64 layer whose parameters are all moved off their initial values."""
    torch.manual_seed(seed)
    layer = GaussianMixtureClassifier(in_features, n_classes, g, dim, cov, rank=2).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def reference_covariances(layer: GaussianMixtureClassifier) -> torch.Tensor:
    """[K, d, d] covariances rebuilt from the raw parameters, independently of the layer."""
    floor, cov = layer.floor, layer.covariance
    if cov == "full":
        a = layer.cov_factor
        return a @ a.mT + floor**2 * torch.eye(layer.dim, dtype=a.dtype)
    std = F.softplus(layer.raw_scale) + floor
    if cov == "lowrank":
        w = layer.cov_factor
        return w @ w.mT + torch.diag_embed(std**2)
    if cov == "diag":
        return torch.diag_embed(std**2)
    u = torch.diag_embed(1 / std) + torch.tril(layer.precision_offdiag, -1)  # Sigma^-1 = U^T U
    return torch.linalg.inv(u.mT @ u)


@pytest.mark.parametrize("cov", COVARIANCES)
@pytest.mark.parametrize("dim", [None, 5])
def test_joint_log_prob_matches_multivariate_normal(cov, dim):
    layer = randomized_layer(cov, dim=dim)
    x = torch.randn(11, 7, dtype=torch.float64) * 2
    z = x if dim is None else x @ layer.projection.weight.T
    covs = reference_covariances(layer)
    with torch.no_grad():
        comp = MultivariateNormal(layer.means, covariance_matrix=covs).log_prob(z[:, None])
        log_w = torch.log_softmax(layer.mixture_logits, -1).reshape(-1)
        ref = (comp + log_w).view(11, 3, 2).logsumexp(-1) - math.log(3)
        joint = layer.joint_log_prob(x)
        torch.testing.assert_close(joint, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(layer.log_prob(x), ref.logsumexp(-1))
        torch.testing.assert_close(layer(x), ref - ref.logsumexp(-1, keepdim=True))
        torch.testing.assert_close(layer(x).exp().sum(-1), torch.ones(11, dtype=torch.float64))
        torch.testing.assert_close(layer.covariance_matrix(), covs)
        if cov != "lowrank":
            torch.testing.assert_close(layer.scale_tril(), torch.linalg.cholesky(covs))


@pytest.mark.parametrize("cov", COVARIANCES)
def test_one_step_changes_means_covariances_and_mixture_weights(cov):
    layer = GaussianMixtureClassifier(6, 3, components_per_class=3, covariance=cov, rank=2)
    with torch.no_grad():  # off the symmetric start, so every parameter has a gradient
        layer.mixture_logits.normal_()
        if cov == "tril":
            layer.precision_offdiag.normal_(0, 0.3)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    covariance_params = {
        "diag": ["raw_scale"],
        "tril": ["raw_scale", "precision_offdiag"],
        "full": ["cov_factor"],
        "lowrank": ["raw_scale", "cov_factor"],
    }[cov]
    assert set(before) == {"means", "mixture_logits", *covariance_params}
    opt = torch.optim.Adadelta(layer.parameters(), lr=1.0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    F.nll_loss(layer(x), y).backward()
    opt.step()
    for name, p in layer.named_parameters():
        changed = p.detach() != before[name]
        if name == "precision_offdiag":  # only the strictly lower triangle is used
            changed = changed.tril(-1)
            assert not (p.detach().triu() != before[name].triu()).any()
        assert changed.any(), f"{name} did not change after one optimizer step"
    assert torch.isfinite(layer(x)).all()


def test_shared_diagonal_covariance_is_the_analytic_linear_classifier():
    """G=1, one diagonal covariance shared by all classes: log p(y|x) = log_softmax(W x + b)
    with W_s = mu_s / sigma^2 and b_s = -|mu_s / sigma|^2 / 2 (the quadratic term cancels)."""
    torch.manual_seed(1)
    layer = GaussianMixtureClassifier(5, 4, covariance="diag").double()
    with torch.no_grad():
        layer.means.normal_(0, 2)
        layer.raw_scale.copy_(torch.randn(5, dtype=torch.float64).expand(4, 5))
    var = (F.softplus(layer.raw_scale[0]) + layer.floor) ** 2
    w = layer.means / var
    b = -0.5 * (layer.means**2 / var).sum(-1)
    x = torch.randn(50, 5, dtype=torch.float64) * 3
    with torch.no_grad():
        logits = x @ w.T + b
        torch.testing.assert_close(layer(x), logits.log_softmax(-1))
        assert torch.equal(layer(x).argmax(-1), logits.argmax(-1))


def test_achlioptas_projection_statistics():
    gen = torch.Generator().manual_seed(0)
    m, n = 400, 500
    p = achlioptas_matrix(m, n, s=3, generator=gen)
    value = math.sqrt(3 / m)
    assert torch.equal(p.unique(), torch.tensor([-value, 0.0, value]))
    frac_pos, frac_neg = (p > 0).float().mean().item(), (p < 0).float().mean().item()
    # 200k entries: the standard error of each fraction is ~0.001
    assert abs(frac_pos - 1 / 6) < 0.005 and abs(frac_neg - 1 / 6) < 0.005
    # entries have mean 0 and variance 1/m, so E|P x|^2 = |x|^2
    assert abs(p.mean().item()) < 3 * math.sqrt(1 / m / p.numel())
    assert abs(p.var().item() * m - 1) < 0.02
    x = torch.randn(200, n)
    ratio = (x @ p.T).square().sum(-1) / x.square().sum(-1)
    assert abs(ratio.mean().item() - 1) < 0.02


def test_projection_is_a_saved_untrained_buffer():
    layer = GaussianMixtureClassifier(20, 3, dim=8, projection_seed=5)
    assert layer.projection is not None and layer.projection.weight.shape == (8, 20)
    assert "projection.weight" in layer.state_dict()
    assert all("projection" not in name for name, _ in layer.named_parameters())
    other = GaussianMixtureClassifier(20, 3, dim=8)  # another projection
    assert not torch.equal(other.projection.weight, layer.projection.weight)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(4, 20)
    torch.testing.assert_close(other(x), layer(x))
    same = GaussianMixtureClassifier(20, 3, dim=8, projection_seed=5)
    assert torch.equal(same.projection.weight, layer.projection.weight)
    assert GaussianMixtureClassifier(20, 3).projection is None  # dim defaults to in_features


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cov", COVARIANCES)
def test_bf16_autocast_keeps_the_math_in_float32(cov, device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 16), GaussianMixtureClassifier(16, 4, 2, covariance=cov, rank=3)
    ).to(device)
    x = torch.randn(32, 10, device=device)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = net(x)
            features = net[0](x)
            assert features.dtype == torch.bfloat16
            joint = net[1].joint_log_prob(features)
    assert out.dtype == torch.float32 and joint.dtype == torch.float32
    # the layer itself is exact on bf16 inputs: it casts them to float32 first
    torch.testing.assert_close(joint, net[1].joint_log_prob(features.float()))
    # the only difference is the bf16 rounding of the features (~3 significant digits)
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.02)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_floor_bounds_the_density():
    layer = GaussianMixtureClassifier(3, 2, covariance="diag", floor=1e-2)
    with torch.no_grad():
        layer.raw_scale.fill_(-200.0)  # softplus -> 0: the std is the floor
        layer.means.zero_()
    bound = -3 * math.log(1e-2) - 1.5 * math.log(2 * math.pi) - math.log(2)
    assert layer.joint_log_prob(torch.zeros(1, 3)).max().item() == pytest.approx(bound, rel=1e-5)


def test_bad_arguments_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="covariance must be one of"):
        GaussianMixtureClassifier(4, 2, covariance="spherical")
    with pytest.raises(ValueError, match="rank"):
        GaussianMixtureClassifier(4, 2, covariance="lowrank", rank=5)
    with pytest.raises(ShapeError, match=r"expects inputs \[B, 4\], got \[3, 5\]"):
        GaussianMixtureClassifier(4, 2)(torch.zeros(3, 5))


def test_full_covariance_survives_float32_rounding():
    """An ill-conditioned A A^T + floor^2 I that float32 cannot factorise is redone in
    float64, and the log-densities agree with a float64 layer."""
    torch.manual_seed(0)
    d = 6
    layer = GaussianMixtureClassifier(d, 2, covariance="full", floor=1e-3)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    a = q * torch.tensor([1e3, 1e2, 1.0, 1.0, 1e-4, 0.0], dtype=torch.float64)
    with torch.no_grad():
        layer.cov_factor.copy_(a.expand(2, d, d))
    cov32 = layer.cov_factor @ layer.cov_factor.mT + 1e-6 * torch.eye(d)
    assert (torch.linalg.cholesky_ex(cov32).info > 0).any()  # float32 alone fails here
    x = torch.randn(5, d)
    with torch.no_grad():
        out = layer.joint_log_prob(x)
        ref = layer.double().joint_log_prob(x.double())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-3)  # float32 precision


@pytest.mark.parametrize("cov", ["diag", "tril", "full"])
def test_refit_is_the_maximum_likelihood_class_gaussian(cov):
    """After `refit`, log p(x, y=s) is log N(x; class mean, class ML covariance (its
    diagonal for diag) + floor^2 I) - log S, by torch.distributions."""
    gen = torch.Generator().manual_seed(0)
    d, n_classes, n = 4, 3, 300
    labels = torch.arange(n_classes).repeat_interleave(n)
    centres = 3 * torch.randn(n_classes, d, generator=gen, dtype=torch.float64)
    mixing = torch.randn(n_classes, d, d, generator=gen, dtype=torch.float64)
    noise = torch.randn(n_classes * n, d, generator=gen, dtype=torch.float64)
    x = centres[labels] + torch.einsum("nij,nj->ni", mixing[labels], noise)
    layer = randomized_layer(cov, in_features=d, n_classes=n_classes, g=1)
    layer.refit(x, labels)
    for s in range(n_classes):
        xs = x[labels == s]
        sigma = torch.cov(xs.T, correction=0)
        sigma = torch.diag(sigma.diagonal()) if cov == "diag" else sigma
        ref = MultivariateNormal(xs.mean(0), sigma + layer.floor**2 * torch.eye(d))
        expected = ref.log_prob(x) - math.log(n_classes)
        assert torch.allclose(layer.joint_log_prob(x)[:, s], expected, atol=1e-8)


@pytest.mark.parametrize("cov", ["diag", "tril", "full"])
def test_refit_on_a_singular_class_keeps_the_floor(cov):
    """Two samples in four dimensions (rank-1 covariance) and a class of one repeated
    point: the refit density stays finite, with variances of at least floor^2."""
    x = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]).double()
    labels = torch.tensor([0, 0, 1, 1])
    layer = randomized_layer(cov, in_features=4, n_classes=2, g=1)
    layer.refit(x, labels)
    assert torch.isfinite(layer.joint_log_prob(x)).all()
    variances = layer.covariance_matrix().diagonal(dim1=-2, dim2=-1)
    assert (variances >= layer.floor**2 * (1 - 1e-6)).all()
    assert torch.allclose(layer.means[1], torch.full((4,), 2.0, dtype=torch.float64))


def test_refit_needs_one_gaussian_per_class_and_a_closed_form_covariance():
    x, labels = torch.randn(6, 7).double(), torch.tensor([0, 1, 2, 0, 1, 2])
    for cov, g in (("tril", 2), ("lowrank", 1)):
        with pytest.raises(ConfigError, match="closed-form refit of the head needs"):
            randomized_layer(cov, g=g).refit(x, labels)
    with pytest.raises(ShapeError, match=r"classes without samples: \[2\]"):
        randomized_layer("tril", g=1).refit(x[:2], labels[:2])
