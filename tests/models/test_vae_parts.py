"""The VAE's parts as config groups: checkpoints of the flat-option layout, a prior added
from outside src/ through Hydra's search path, the VampPrior through gmlab.train, and the
one-way layering of distributions/."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from support.cli import gmlab
from support.compose import train_config

from gmlab.data import DigitsDataModule
from gmlab.errors import UntrustedFileError
from gmlab.models.vae import VAE
from gmlab.nn.network_priors import VampPrior
from gmlab.train import train
from gmlab.utils.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "checkpoints_v0"


@pytest.mark.parametrize("name", ["vae", "vae_mog", "made"])
def test_flat_option_checkpoints_load_and_reproduce_their_log_likelihoods(name):
    reference = json.loads((FIXTURES / "reference.json").read_text())[name]
    model = load_model(FIXTURES / f"{name}.ckpt").eval()
    assert isinstance(model, VAE) and model.hparams.encoder["hidden"] == [8]
    dm = DigitsDataModule(batch_size=8, eval_batch_size=8)
    dm.setup("test")
    x = next(iter(dm.test_dataloader()))[0]
    torch.manual_seed(0)
    with torch.no_grad():
        ll = model.log_likelihood(x)
    torch.testing.assert_close(ll, torch.tensor(reference["log_likelihood_seed0"]))


def test_the_readme_example_composes_the_chosen_parts():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=["model=vae", "model/prior=mog", "model/likelihood=bernoulli"]
        )
    assert cfg.model.prior._target_ == "gmlab.distributions.priors.MixturePrior"
    assert cfg.model.likelihood._target_ == "gmlab.distributions.likelihoods.BernoulliLikelihood"
    assert cfg.model.decoder.hidden == cfg.model.encoder.hidden == [400]


TOY_PRIOR = '''
import torch
from gmlab.distributions.priors import Prior


class WidePrior(Prior):
    """N(0, scale^2 I): a prior that exists only outside src/."""

    def __init__(self, dim, scale=2.0):
        super().__init__(dim)
        self.scale = float(scale)

    def log_prob(self, z):
        s = self.scale
        return torch.distributions.Normal(0.0, s).log_prob(z).sum(-1)

    def sample(self, n):
        return self.scale * torch.randn(n, self.dim, device=self.device)
'''


@pytest.mark.slow
def test_a_prior_added_through_the_search_path_trains_with_gmlab_train(
    tmp_path, run_env, monkeypatch
):
    (tmp_path / "toy_prior_module.py").write_text(textwrap.dedent(TOY_PRIOR))
    group = tmp_path / "conf" / "model" / "prior"
    group.mkdir(parents=True)
    (group / "toy.yaml").write_text("_target_: toy_prior_module.WidePrior\nscale: 3.0\n")
    env = {**run_env, "PYTHONPATH": f"{tmp_path}:{run_env['PYTHONPATH']}"}
    out = tmp_path / "run"
    gmlab(
        "gmlab-train",
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "model=vae",
            "model/prior=toy",
            "model.encoder.hidden=[16]",
            "model.latent_dim=2",
            "data=digits",
            "trainer.max_epochs=1",
            "model.eval.iwae_k=4",
            "logger=csv",
            f"hydra.run.dir={out}",
        ],
        env,
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the checkpoint names the module
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.prior\._target_"):
        load_model(last)  # a part outside gmlab: built from a file only with the opt-in
    model = load_model(last, trusted_targets=["toy_prior_module."])
    assert type(model.prior).__name__ == "WidePrior" and model.prior.scale == 3.0
    assert model.kl_mode == "mc"  # no analytic KL offered: Monte Carlo
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test/nll_iwae" in json.dumps(metrics)


def test_vamp_prior_trains_through_gmlab_train_and_its_checkpoint_reloads(tmp_path):
    cfg = train_config(
        tmp_path,
        [
            "model=vae",
            "model/prior=vamp",
            "model.prior.n_components=10",
            "model/likelihood=bernoulli",
            "model/preprocess=binarize_dynamic",
            "model.encoder.hidden=[32]",
            "model.latent_dim=4",
            "model.eval.iwae_k=8",
            "data=digits",
            "data.batch_size=64",
            "trainer.max_epochs=3",
            "logger=csv",
        ],
    )
    metrics = train(cfg)
    assert metrics["test/nll_iwae"] < metrics["val/nll"] + 5.0  # a trained model, and IWAE
    model = load_model(tmp_path / "checkpoints" / "last.ckpt").eval()
    assert isinstance(model.prior, VampPrior) and model.prior.pseudo_raw.shape == (10, 1, 8, 8)
    u = model.prior.pseudo_inputs()
    assert u.min() >= 0 and u.max() <= 1
    start = torch.full_like(model.prior.pseudo_raw, 0.05)
    assert (model.prior.pseudo_raw - start).abs().max() > 0.05  # the pseudo-inputs learned
    z = torch.randn(5, 4)
    with torch.no_grad():  # the reloaded prior is built on the reloaded encoder
        mu, logvar = model.encode(u)
        ref = torch.logsumexp(
            torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z[:, None]).sum(-1), 1
        ) - torch.log(torch.tensor(10.0))
        torch.testing.assert_close(model.prior.log_prob(z), ref, atol=1e-4, rtol=1e-5)


def test_distributions_import_nothing_of_nn_or_models():
    for path in sorted((REPO / "src" / "gmlab" / "distributions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.startswith(("gmlab.nn", "gmlab.models"))]
            assert not bad, f"{path.name} imports {bad}"
