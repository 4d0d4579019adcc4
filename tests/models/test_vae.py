"""The VAE LightningModule: training, evaluation metrics, sampling, figures, configs."""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from support.parts import mlp_parts, part
from support.trainer import quiet_trainer

from gmlab.data import DigitsDataModule
from gmlab.distributions.normal import diag_normal_rsample
from gmlab.distributions.priors import NormalPrior
from gmlab.errors import ConfigError
from gmlab.models.vae import VAE

CONF = Path(__file__).resolve().parents[2] / "conf"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits_vae(prior: str = "normal", prior_options: dict | None = None, **kw) -> VAE:
    args = dict(
        data_shape=(1, 8, 8),
        preprocess={"binarize": "dynamic"},
        latent_dim=8,
        **mlp_parts([64]),
        likelihood=part("likelihood", "bernoulli"),
        prior=part("prior", prior, **(prior_options or {})),
        optimizer=part("optimizer", "adam", lr=3e-3),
        eval={"iwae_k": 20},
    )
    return VAE(**{**args, **kw})


@pytest.mark.parametrize(
    ("prior", "options"),
    [("normal", {}), ("mog", {"n_components": 20}), ("vamp", {"n_components": 20})],
)
def test_short_training_lowers_the_loss_and_test_logs_both_bounds(prior, options):
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    dm.setup()
    x_val = dm.tensors("val")[0]
    model = digits_vae(prior, options)

    def val_elbo():
        torch.manual_seed(1)
        with torch.no_grad():
            return torch.stack([model.elbo(x_val).mean() for _ in range(5)]).mean().item()

    before = val_elbo()
    quiet_trainer(max_epochs=4).fit(model, datamodule=dm)
    after = val_elbo()
    assert after > before + 5.0, (before, after)
    metrics = quiet_trainer().test(model, datamodule=dm, verbose=False)[0]
    for key in ("test/nll_iwae", "test/bpd_iwae", "test/elbo", "test/kl", "test/recon"):
        assert key in metrics
    assert metrics["test/nll"] == metrics["test/nll_iwae"]
    assert metrics["test/nll_iwae"] <= -metrics["test/elbo"] + 0.5  # IWAE(20) >= ELBO


def test_validation_logs_elbo_pieces_and_active_units():
    dm = DigitsDataModule(batch_size=64, eval_batch_size=100, val_size=150)
    model = digits_vae()
    t = quiet_trainer(max_epochs=1, limit_train_batches=3)
    t.fit(model, datamodule=dm)
    m = t.callback_metrics
    for key in ("val/elbo", "val/recon", "val/kl", "val/nll", "val/bpd", "val/active_units"):
        assert key in m, key
    torch.testing.assert_close(m["val/elbo"], m["val/recon"] - m["val/kl"], atol=1e-3, rtol=0)
    assert 0 <= m["val/active_units"] <= 8


def test_conv_vlae_trains_samples_and_draws_figures():
    torch.manual_seed(0)
    model = VAE(
        data_shape=(3, 32, 32),
        preprocess={"scale": "symmetric"},
        latent_dim=4,
        encoder=part("encoder", "conv", channels=[4, 8, 8, 16]),
        decoder=part("decoder", "conv", channels=[4, 8, 8, 16], channels_last=True),
        prior=part("prior", "made", hidden=[16]),
        likelihood=part("likelihood", "discretized_logistic"),
    )
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    loss = model.training_step((x, torch.zeros(6)), 0)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    with torch.no_grad():
        for noise in (True, False):
            s = model.sample(5, noise=noise)
            assert s.shape == (5, 3, 32, 32) and s.min() >= 0 and s.max() <= 255
        figs = model.figures(x)
    assert set(figs) == {"samples", "samples_noise", "reconstructions", "interpolations"}
    assert figs["interpolations"].shape[0] == 3
    assert all(f.min() >= 0 and f.max() <= 1 for f in figs.values())


def test_two_d_figures_are_scatter_images():
    model = VAE(
        data_shape=(2,), latent_dim=2, **mlp_parts([8]), likelihood=part("likelihood", "gaussian")
    )
    with torch.no_grad():
        figs = model.figures(torch.randn(50, 2))
    img = figs["scatter"]
    assert img.dim() == 3 and img.shape[0] == 3 and img.shape[2] > img.shape[1]
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0


def test_posterior_draw_density_matches_torch_and_stays_finite_when_the_variance_underflows():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    z, log_q = diag_normal_rsample(mu, logvar, 4)
    assert z.shape == (4, 5, 3)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_q, ref, atol=1e-4, rtol=1e-5)
    # an encoder that is sure of itself on an odd input: exp(logvar / 2) is 0 in float32
    model = digits_vae(prior="mog", prior_options={"n_components": 3}, kl="mc")
    encoder_out = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        encoder_out.bias[8:] = -400.0
        encoder_out.weight[8:] = 0.0
    x = torch.full((4, 1, 8, 8), 16, dtype=torch.uint8)
    with torch.no_grad():
        bound = model.iwae_bound(x, 6)
        mu, _ = model.encode(model.prepare(x)[0])
        # z = mu exactly and log q = sum over 8 dims of (400 - eps^2 - log 2 pi) / 2, so
        # L_k <= base - min log q = base - 1600 + 4 log 2 pi + max sum eps^2 / 2: below the
        # line asserted while every draw of this seed has sum eps^2 < 16 (a chi^2_8 value)
        base = model.likelihood.log_prob(
            model.prepare(x)[0], model.decode(mu)
        ) + model.prior.log_prob(mu)
    assert torch.isfinite(bound).all()
    assert (bound < base - 8 * (200 - 1 - 0.5 * math.log(2 * math.pi))).all()
    assert torch.isfinite(model.elbo(x)).all()


def test_mixture_kl_modes_agree_for_one_component_and_bad_configs_fail():
    torch.manual_seed(0)
    model = digits_vae("mog", {"n_components": 1}, kl="approx")
    with torch.no_grad():
        model.prior.means.zero_()
        model.prior.logvars.zero_()
    mu, logvar = torch.randn(4, 8), torch.randn(4, 8)
    z, log_q = diag_normal_rsample(mu, logvar)
    approx = model.kl_term(z, log_q, mu, logvar, "approx")
    analytic = NormalPrior(8).analytic_kl(mu, logvar).sum(-1)  # the one component: N(0, I)
    torch.testing.assert_close(approx, analytic, atol=1e-4, rtol=1e-5)
    with pytest.raises(ConfigError, match="model.kl=approx: NormalPrior has no KL approx"):
        digits_vae(kl="approx")
    with pytest.raises(ConfigError, match="model.kl=analytic: FlowPrior has no analytic KL"):
        digits_vae("made", {"hidden": [8]}, kl="analytic")
    with pytest.raises(ConfigError, match="model.kl must be one of"):
        digits_vae(kl="exact")
    with pytest.raises(ConfigError, match=r"model.encoder .*side 8 is not divisible by 2\^4"):
        digits_vae(encoder=part("encoder", "conv", channels=[2, 2, 2, 2, 2]))
    with pytest.raises(ConfigError, match="decoder likelihoods need bounded inputs"):
        digits_vae(preprocess={"scale": "logit"})


def test_free_bits_and_warm_up_shape_the_kl_penalty():
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    model = digits_vae(free_bits=100.0)  # every dim under the floor: a constant KL term
    torch.manual_seed(0)
    loss = model.training_step((x, None), 0)
    torch.manual_seed(0)
    recon = model.elbo_terms(model.prepare(x, train=True)[0])["recon"].mean()
    torch.testing.assert_close(loss, -recon + 100.0 * 8)
    warm = digits_vae(kl_warmup_steps=10)
    assert [warm.kl_weight(s) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert digits_vae().kl_weight(0) == 1.0


EXPERIMENTS = [
    "vae2d_gauss1",
    "vae2d_gauss2",
    "vae_mnist",
    "vae_mog_mnist",
    "vae_svhn",
    "vae_cifar10",
    "vlae_svhn",
    "vlae_cifar10",
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_and_build(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    import hydra

    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(model, VAE)
    x = torch.zeros(2, *model.data_shape)
    x = x.to(torch.uint8) if model.is_image else x
    with torch.no_grad():
        assert torch.isfinite(model.elbo(x)).all()
    if "mnist" in name:
        assert model.preprocess.binarize == "dynamic" and cfg.data.batch_size == 200
        assert (model.latent_dim, model.hparams.encoder["hidden"]) == (10, [400])
    if name == "vae_mog_mnist":
        assert model.prior.n_components == 1000


@pytest.mark.parametrize(
    ("name", "prior"),
    [
        ("vae_mnist_wide", "priors.NormalPrior"),
        ("vae_mog_mnist_wide", "priors.MixturePrior"),
        ("vae_vamp_mnist_wide", "nn.network_priors.VampPrior"),
    ],
)
def test_wide_presets_share_every_setting_but_the_prior(name, prior):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    m = cfg.model
    assert m.prior._target_.endswith(prior) and m.prior.get("n_components", 500) == 500
    assert m.encoder.hidden == m.decoder.hidden == [400, 400] and m.latent_dim == 32
    assert m.likelihood._target_.endswith("BernoulliLikelihood")
    assert m.preprocess.binarize == "dynamic" and m.kl_warmup_steps == 2750
    assert m.optimizer.lr == 1e-3 and m.optimizer._target_ == "torch.optim.Adam"
    assert (m.lr_scheduler.decay_start, m.lr_scheduler.decay_steps) == (50000, 50000)
    assert (m.eval.iwae_k, cfg.trainer.max_steps, cfg.data.batch_size) == (5000, 100000, 200)


@pytest.mark.parametrize("scale", ["unit", "symmetric"])
def test_discretized_logistic_bins_follow_the_data_levels(scale):
    """With 17-level data the decoder's bins are the data's 17: the model-space density at
    the bin centres, times the bin width, sums to 1 over the levels (with 256 bins it
    would not)."""
    torch.manual_seed(0)
    model = VAE(
        (1, 1, 1),
        {"num_levels": 17, "scale": scale},
        latent_dim=2,
        **mlp_parts([4]),
        likelihood=part("likelihood", "discretized_logistic"),
    )
    levels = torch.arange(17, dtype=torch.uint8).view(17, 1, 1, 1)
    x = model.preprocess.to_model_space(levels)  # bin centres in model space
    params = torch.randn(1, 2, 1, 1, 1).expand(17, -1, -1, -1, -1)
    width = (2.0 if scale == "symmetric" else 1.0) / 17
    mass = model.likelihood.log_prob(x, params).exp() * width
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("every", [1, 4])
def test_step_values_reach_the_logger_as_when_logged_on_every_step(tmp_path, monkeypatch, every):
    """`log_step` skips the steps Lightning does not write to its loggers: the CSV log holds
    the same rows and values as logging on every step, from 1/every of the `self.log` calls."""
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    import gmlab.models.base as base

    def fit(folder: Path, every_step: bool) -> tuple[list[dict], list[str]]:
        calls: list[str] = []
        with monkeypatch.context() as m:
            if every_step:  # what logging every step would write
                m.setattr(base, "writes_step_logs", lambda trainer: True)
            L.seed_everything(0)
            model = digits_vae(lr_scheduler=part("lr_scheduler", "step"))
            log = model.log
            model.log = lambda name, *a, **k: (calls.append(name), log(name, *a, **k))[1]
            trainer = L.Trainer(
                max_steps=12,
                log_every_n_steps=every,
                logger=CSVLogger(folder),
                limit_val_batches=0,
                accelerator="cpu",
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
        text = Path(trainer.logger.experiment.metrics_file_path).read_text()
        rows = [r for r in csv.DictReader(text.splitlines()) if r.get("train/loss")]
        return rows, [c for c in calls if c.startswith("train/")]

    rows, calls = fit(tmp_path / "skipping", every_step=False)
    every_rows, every_calls = fit(tmp_path / "every", every_step=True)
    assert rows == every_rows and len(rows) == 12 // every
    assert {"train/loss", "train/elbo", "train/kl", "train/lr"} <= set(rows[0])
    assert len(calls) * every == len(every_calls) == 4 * 12


@pytest.mark.parametrize(("prior", "options"), [("normal", {}), ("made", {"hidden": [16]})])
def test_float64_training_runs_in_float64_and_matches_float32(prior, options):
    """trainer.precision=64-true: batches and prior draws follow the model into float64
    (they stayed float32 and met float64 weights), and the encoder, prior and decoder
    terms of the same weights and dequantization noise agree with the float32 model's."""
    import lightning as L

    L.seed_everything(0)
    model = digits_vae(prior, options, preprocess={"dequantize": True})
    quiet_trainer(precision="64-true", max_steps=2, limit_val_batches=1).fit(
        model, datamodule=DigitsDataModule(batch_size=32)
    )
    assert model.sample(3).dtype == torch.float64
    x_raw = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)

    def terms(vae: VAE) -> torch.Tensor:  # [5, 2 D + 2], no sampling but the noise
        torch.manual_seed(1)
        x, _ = vae.prepare(x_raw)
        mu, logvar = vae.encode(x)
        fit = vae.likelihood.log_prob(x, vae.decode(mu))
        return torch.cat([mu, logvar, fit[:, None], vae.prior.log_prob(mu)[:, None]], 1)

    double = terms(model)
    single = terms(model.float())
    assert double.dtype == torch.float64 and single.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-3)
