"""OOD scores of every family through the model protocol: their definitions, the VAE's own
k, finiteness on degenerate images, and the post-hoc class Gaussians."""

from pathlib import Path

import hydra
import pytest
import torch
from support.compose import train_config

from gmlab.data import DigitsDataModule
from gmlab.ood.complexity import complexity_bits_per_dim
from gmlab.ood.posthoc import ClassGaussians
from gmlab.ood.scores import Scorer
from gmlab.utils.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints_v0"


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule()
    return dm.tensors("val")[0][:40], dm.tensors("train"), dm.tensors("test")[0][:16]


def composed(tmp_path, name, *overrides):
    cfg = train_config(tmp_path, [f"model={name}", "data=digits", *overrides])
    return hydra.utils.instantiate(cfg.model, _convert_="all")


def degenerate_images() -> torch.Tensor:
    """Constant images at 0, 1, 128, 254, 255, and two of uniform noise: [7, 1, 8, 8]."""
    const = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(5, 1, 1, 1)
    noise = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    return torch.cat([const.expand(5, 1, 8, 8), noise.to(torch.uint8)])


DENSITY = ["mfa", "mppca", "gaussian", "realnvp", "vqvae", "vae", "vae_mog", "vae_binarized"]


def density_model(name, tmp_path):
    if name == "vae_binarized":
        return composed(tmp_path, "vae", "model.preprocess.binarize=dynamic")
    if name.startswith("vae"):
        return composed(tmp_path, name)
    return load_model(FIXTURES / f"{name}.ckpt")


@pytest.mark.parametrize("name", DENSITY)
def test_density_scores(name, tmp_path, digits):
    x_val, (x_train, y_train), x_test = digits
    model = density_model(name, tmp_path)
    scorer = Scorer(model, compressor="zlib", iwae_k=4, batch_size=5).fit(x_val, x_train, y_train)
    assert scorer.names == ("bpd", "complexity", "typicality", "complexity_typicality")
    x = torch.cat([x_test, degenerate_images()])
    torch.manual_seed(0)
    scores = scorer(x)
    for s in scores.values():
        assert s.shape == (len(x),) and torch.isfinite(s).all()
    # the same seed gives the same dequantization noise (and VAE samples) in batches of 5
    torch.manual_seed(0)
    with torch.no_grad():
        bpd = torch.cat(
            [model.to_bits(scorer.log_likelihood(x[i : i + 5])) for i in range(0, len(x), 5)]
        )
    assert torch.allclose(scores["bpd"], bpd, atol=1e-4)
    shown = scorer.complexity_input(x)
    if model.preprocess.discrete:  # the compressor sees the binarized image
        assert set(shown.unique().tolist()) <= {0, 255} and torch.equal(
            shown[5:7], x[5:7] // 128 * 255
        )
    else:
        assert torch.equal(shown, x)
    expected = scores["bpd"] - complexity_bits_per_dim(shown, "zlib")
    assert torch.allclose(scores["complexity"], expected, atol=1e-5)
    torch.manual_seed(1)
    val_mean = scorer.bpd(x_val).double().mean()
    assert scorer.val_mean_bpd == pytest.approx(float(val_mean), rel=0.05)
    assert torch.allclose(scores["typicality"], (scores["bpd"] - scorer.val_mean_bpd).abs())
    centre = scorer.val_mean_complexity
    assert torch.allclose(scores["complexity_typicality"], (scores["complexity"] - centre).abs())


def test_the_vae_is_scored_by_its_bound_with_the_ood_k(tmp_path, digits):
    model = composed(tmp_path, "vae")
    seen = []
    bound = model.iwae_bound
    model.iwae_bound = lambda x, k=None: seen.append(k) or bound(x, k)
    scorer = Scorer(model, iwae_k=7, batch_size=100)
    scorer.bpd(digits[2])
    assert seen == [7]
    assert model.eval_cfg["iwae_k"] != 7  # the test-time k is left alone


@pytest.mark.parametrize("head", ["gmm", "linear"])
def test_classifier_scores(head, tmp_path, digits):
    x_val, (x_train, y_train), x_test = digits
    if head == "gmm":
        model = load_model(FIXTURES / "gmm.ckpt")
    else:
        model = composed(tmp_path, "gmm_classifier", "model/head=linear", "model.features=8")
    scorer = Scorer(model, batch_size=7).fit(x_val, x_train[:300], y_train[:300])
    density = "log_pf" if head == "gmm" else "energy"
    assert scorer.names == ("max_softmax", density, "posthoc_log_pf")
    x = torch.cat([x_test, degenerate_images()])
    scores = scorer(x)
    with torch.no_grad():
        joint = model.eval().joint(x).float()
        features = model.features(x)
    assert torch.allclose(scores["max_softmax"], joint.softmax(-1).max(-1).values, atol=1e-5)
    assert torch.allclose(scores[density], joint.logsumexp(-1), atol=1e-4)
    assert torch.allclose(scores["posthoc_log_pf"], scorer.gaussians.log_prob(features), atol=1e-4)
    for s in scores.values():
        assert torch.isfinite(s).all()
    assert (
        (scores["max_softmax"] >= 1 / model.num_classes - 1e-6) & (scores["max_softmax"] <= 1)
    ).all()


def test_class_gaussians_against_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    d = 5
    centres = torch.randn(3, d, generator=gen) * 3
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 90)
    mixing = torch.randn(3, d, d, generator=gen)
    f = centres[labels] + torch.einsum(
        "nij,nj->ni", mixing[labels], torch.randn(180, d, generator=gen)
    )
    g = ClassGaussians().fit(f, labels)
    query = torch.randn(20, d, generator=gen) * 4
    comps = []
    for c in range(3):
        fc = f[labels == c].double()
        cov = torch.cov(fc.T, correction=0)
        comps.append(
            torch.distributions.MultivariateNormal(fc.mean(0), cov).log_prob(query.double())
        )
    log_pi = torch.tensor([60, 30, 90], dtype=torch.float64).div(180).log()
    expected = (torch.stack(comps, -1) + log_pi).logsumexp(-1)
    assert torch.allclose(g.log_prob(query).double(), expected, rtol=1e-5, atol=1e-4)


def test_class_gaussians_on_singular_features():
    """Fewer samples than dimensions and a dead feature: jitter, finite log-densities."""
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(12, 8, generator=gen)
    f[:, 3] = 0.0
    labels = torch.tensor([0] * 4 + [1] * 8)
    g = ClassGaussians().fit(f, labels)
    out = g.log_prob(torch.randn(6, 8, generator=gen))
    assert torch.isfinite(out).all()
    assert torch.isfinite(g.log_prob(f)).all() and (g.log_prob(f).mean() > out.mean())


def test_first_rows_reads_only_the_rows_it_returns(monkeypatch):
    from gmlab.data.split import Split
    from gmlab.ood.run import first_rows

    dm = DigitsDataModule()
    x_all, y_all = dm.tensors("train")
    sizes = []
    original = Split.tensors
    monkeypatch.setattr(Split, "tensors", lambda self: (sizes.append(len(self)), original(self))[1])
    x, y = first_rows(dm, "train", 5)
    assert sizes == [5] and torch.equal(x, x_all[:5]) and torch.equal(y, y_all[:5])
    assert len(first_rows(dm, "train", None)[0]) == len(x_all)


def test_ratio_is_the_bpd_difference_against_the_reference(digits):
    x_val, (x_train, y_train), x_test = digits
    model, reference = load_model(FIXTURES / "mfa.ckpt"), load_model(FIXTURES / "gaussian.ckpt")
    scorer = Scorer(model, compressor="zlib", batch_size=5, reference=reference)
    scorer.fit(x_val, x_train, y_train)
    assert scorer.names == ("bpd", "complexity", "typicality", "complexity_typicality", "ratio")
    assert Scorer(model).names[-1] == "complexity_typicality"  # no reference, no ratio
    x = torch.cat([x_test, degenerate_images()])
    torch.manual_seed(0)
    ratio = scorer(x, ("ratio",))["ratio"]
    torch.manual_seed(0)  # the same noise: the model's batches first, then the reference's
    with torch.no_grad():
        bits = [
            torch.cat([m.to_bits(m.log_likelihood(x[i : i + 5])) for i in range(0, len(x), 5)])
            for m in (model, reference)
        ]
    assert torch.isfinite(ratio).all()
    assert torch.allclose(ratio, bits[0] - bits[1], atol=1e-4)


def test_the_reference_must_be_a_density_model_of_the_same_data(tmp_path):
    mfa = load_model(FIXTURES / "mfa.ckpt")
    binarized = composed(tmp_path, "vae", "model.preprocess.binarize=dynamic")
    with pytest.raises(ValueError, match=r"same data: \(shape, levels, binarized\)"):
        Scorer(mfa, reference=binarized)
    with pytest.raises(ValueError, match="must be a density model, not GMMClassifier"):
        Scorer(mfa, reference=load_model(FIXTURES / "gmm.ckpt"))
    with pytest.raises(ValueError, match="classifiers have none"):
        Scorer(load_model(FIXTURES / "gmm.ckpt"), reference=mfa)
