"""MFAModel: EM under Lightning (gmlab-train), checkpoints and resume, old checkpoints,
MFAFinetune, DDP."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from support.compose import train_config
from support.trainer import quiet_trainer

from gmlab.data.digits import DigitsDataModule
from gmlab.estimators.mfa import _TensorDataModule
from gmlab.models.mfa import MFABase, MFAModel
from gmlab.models.mfa_finetune import MFAFinetune
from gmlab.train import build, train
from gmlab.utils.checkpoint import load_model

V0 = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints_v0"
FAST = ["logger=csv", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_cfg(tmp_path: Path, overrides: list[str]):
    return train_config(tmp_path, [*FAST, *overrides])


def test_default_train_is_mfa_on_digits_and_checkpoints_every_pass(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=mfa_digits", "trainer.max_epochs=3"])
    assert cfg.model._target_ == "gmlab.models.mfa.MFAModel"
    metrics = train(cfg)
    assert metrics["val/bpd"] < 6.5 and metrics["test/bpd"] < 6.6  # diagonal Gaussian: ~7.3
    assert metrics["train/reseeded"] == 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2  # written after every EM pass although EM takes no step
    assert last["global_step"] == 3  # one step per M-step, no optimizer
    assert last["gmlab"]["class"] == "gmlab.models.mfa.MFAModel"
    for name in ("samples", "samples_noise_free", "components", "inpainting", "lowest_likelihood"):
        assert (tmp_path / "images" / name / "epoch_002.png").is_file(), name
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert bool(model.initialized) and isinstance(model, MFAModel)


def test_resume_continues_with_the_next_pass(tmp_path):
    base = ["experiment=mfa_digits", "trainer.deterministic=true", "test=false"]
    straight = make_cfg(tmp_path / "a", [*base, "trainer.max_epochs=4"])
    train(straight)
    first = make_cfg(tmp_path / "b", [*base, "trainer.max_epochs=2"])
    train(first)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    resumed = make_cfg(tmp_path / "b", [*base, "trainer.max_epochs=4", f"ckpt_path={last}"])
    train(resumed)
    a = load_model(tmp_path / "a" / "checkpoints" / "last.ckpt")
    b = load_model(last)
    assert torch.load(last, weights_only=True)["epoch"] == 3
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_global_step_counts_m_steps_and_max_steps_stops_after_whole_passes(tmp_path):
    """Six E-step batches per pass, one M-step: global_step = passes; max_steps=2 ends the
    run after the second pass, whose parameters last.ckpt holds."""
    cfg = make_cfg(
        tmp_path,
        ["experiment=mfa_digits", "data.batch_size=256", "trainer.max_steps=2", "test=false"],
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.num_training_batches == 6 and trainer.optimizers == []
    assert trainer.global_step == 2 and trainer.current_epoch == 2
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["epoch"] == 1
    torch.testing.assert_close(last["state_dict"]["mixture.means"], model.mixture.means)


def test_checkpoints_written_with_the_built_in_finetuning_still_load():
    """tests/fixtures/checkpoints_v0/{mfa,mppca}.ckpt (hyperparameters em_passes and
    finetune_lr) rebuild as MFAModel and reproduce their reference log-likelihoods."""
    reference = json.loads((V0 / "reference.json").read_text())
    x = next(iter(DigitsDataModule(batch_size=8, eval_batch_size=8).test_dataloader()))[0]
    for name, noise in (("mfa", "diagonal"), ("mppca", "isotropic")):
        model = load_model(V0 / f"{name}.ckpt").eval()
        assert isinstance(model, MFAModel) and model.hparams.noise == noise
        assert "em_passes" not in model.hparams and bool(model.initialized)
        torch.manual_seed(0)
        with torch.no_grad():
            ll = model.log_likelihood(x)
        expected = torch.tensor(reference[name]["log_likelihood_seed0"])
        torch.testing.assert_close(ll, expected, rtol=1e-5, atol=1e-4, msg=name)


def test_finetuning_starts_from_the_em_fit_and_keeps_the_floor(tmp_path):
    em_cfg = make_cfg(tmp_path / "em", ["experiment=mfa_digits", "trainer.max_epochs=2"])
    train(em_cfg)
    em_ckpt = next((tmp_path / "em" / "checkpoints").glob("best-*.ckpt"))
    em = load_model(em_ckpt)
    overrides = [
        "experiment=mfa_digits",
        "model=mfa_finetune",
        f"model.em_ckpt={em_ckpt}",
        "model.n_components=3",  # replaced by the EM fit's K=10
        "model.optimizer.lr=1e-4",
        "data.batch_size=256",
        "trainer.max_epochs=1",
        "test=false",
    ]
    datamodule, model, trainer = build(make_cfg(tmp_path / "ft", overrides))
    assert isinstance(model, MFAFinetune) and model.mixture.n_components == 10
    torch.testing.assert_close(model.mixture.means, em.mixture.means)
    datamodule.setup("fit")
    x = datamodule.tensors("train")[0]
    before = _mean_ll(em, x)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 6  # Adam steps: one per batch
    floor = torch.log(torch.tensor(model.hparams.noise_floor))
    assert (model.mixture.log_noise >= floor - 1e-6).all()
    assert not torch.equal(model.mixture.means, em.mixture.means)
    assert _mean_ll(model, x) > before  # Adam improves the EM fit's training likelihood
    again = load_model(tmp_path / "ft" / "checkpoints" / "last.ckpt")  # without em_ckpt
    assert isinstance(again, MFAFinetune) and again.hparams.em_ckpt is None
    torch.testing.assert_close(again.mixture.means, model.mixture.means)


def _mean_ll(model, x_raw: torch.Tensor) -> float:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return float(model.log_likelihood(x_raw).mean())


def test_inpainting_samples_and_feature_sampling_through_the_module(tmp_path):
    cfg = make_cfg(
        tmp_path,
        [
            "experiment=mfa_digits",
            "trainer.max_epochs=2",
            "test=false",
            "model.feature_sampling=0.5",
            "model.init=rnd_samples",
        ],
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    x = datamodule.tensors("test")[0][:8]
    rec = model.reconstruct(x)
    assert rec.shape == x.shape
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    torch.testing.assert_close(rec[..., left], x[..., left].float(), atol=0.5, rtol=0)
    s = model.sample(5)
    assert s.shape == (5, 1, 8, 8) and s.min() >= 0 and s.max() <= 255
    assert "train/ll" not in trainer.callback_metrics  # only a subset's likelihood
    assert torch.isfinite(trainer.callback_metrics["val/bpd"])
    figs = model.figures(x)
    assert figs["components"].shape[0] == 3
    assert set(figs) >= {"samples", "components", "inpainting"}


def fit_points(strategy: str, devices: int):
    """A few EM passes on float points; returns the fitted parameters."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 2, generator=g)
    x = z @ torch.randn(2, 6, generator=g) + torch.randn(400, 6, generator=g) * 0.3
    x[200:] += 4.0
    dm = _TensorDataModule(x, batch_size=50)  # 8 batches: 4 per rank under 2 processes
    model = MFAModel([6], n_components=3, n_factors=2, init="kmeans", noise_floor=1e-4)
    trainer = quiet_trainer(
        devices=devices,
        strategy=strategy,
        max_epochs=3,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    return {k: v.detach().clone() for k, v in model.mixture.state_dict().items()}


def test_two_process_ddp_gives_the_single_process_parameters():
    single = fit_points("auto", 1)
    ddp = fit_points("ddp_spawn", 2)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_robust_density_is_the_mixture_of_the_components_and_their_broad_twins():
    """outlier_weight=eps: log p = log((1 - eps) p_MFA + eps p_twin), against a dense
    torch.distributions mixture of the 2K Gaussians; eps=0 is the plain mixture."""
    g = torch.Generator().manual_seed(3)
    k, d, l, eps, floor = 3, 6, 2, 0.05, 0.5
    model = MFAModel([d], n_components=k, n_factors=l, outlier_weight=eps, outlier_floor=floor)
    model.mixture.set_params(
        means=torch.randn(k, d, generator=g),
        factors=torch.randn(k, d, l, generator=g),
        noise_variance=torch.rand(k, d, generator=g) + 0.01,
        weights=torch.rand(k, generator=g) + 0.1,
    )
    x = 2 * torch.randn(50, d, generator=g)
    m = model.mixture
    cov = m.factors @ m.factors.mT
    comps = torch.distributions.MultivariateNormal(
        torch.cat([m.means, m.means]).double(),
        torch.cat(
            [
                cov + torch.diag_embed(m.noise_variance),
                cov + torch.diag_embed(m.noise_variance.clamp_min(floor)),
            ]
        ).double(),
    )
    weights = torch.cat([(1 - eps) * m.weights, eps * m.weights]).double()
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(weights), comps)
    with torch.no_grad():
        torch.testing.assert_close(
            model.log_likelihood(x).double(), mix.log_prob(x.double()), rtol=1e-5, atol=1e-4
        )
        model.hparams.outlier_weight = 0.0
        torch.testing.assert_close(model.log_likelihood(x), m.log_prob(x))
        model.hparams.outlier_weight = eps
    assert (model.mixture.noise_variance < floor).any()  # the fitted mixture is untouched


@pytest.mark.parametrize("cls", [MFAModel, MFAFinetune])
def test_hyperparameters_hold_every_option_also_the_defaults(cls):
    """The subclasses pass `MFABase`'s options through by keyword; the checkpoint's
    hyperparameters still list all of them, so a later change of a default cannot change
    what an old checkpoint means."""
    model = cls([4], n_components=2, noise="isotropic")
    names = set(inspect.signature(MFABase.__init__).parameters) - {"self"}
    names |= set(inspect.signature(cls.__init__).parameters) - {"self", "mixture"}
    assert set(model.hparams) == names
    assert (model.hparams.n_components, model.hparams.noise) == (2, "isotropic")
    assert (
        model.hparams.init_samples
        == inspect.signature(MFABase.__init__).parameters["init_samples"].default
    )
    assert model.mixture.n_components == 2 and model.mixture.noise == "isotropic"


def test_init_points_read_only_the_chosen_rows_of_the_train_split(monkeypatch):
    """A seeded subset of the carved train split, gathered row by row: the split is never
    copied whole (`Split.tensors` is not called), and the points are those rows."""
    from gmlab.data.split import Split

    dm = DigitsDataModule()
    split = dm.split_data("train")
    assert split.index is not None  # train is carved from the bundled set (val is the rest)
    model = MFAModel([1, 8, 8], n_components=2, n_factors=1, init_samples=50, seed=3)
    monkeypatch.setattr(Split, "tensors", lambda self: pytest.fail("copied the whole split"))
    points = model.init_points(dm)
    rows = torch.randperm(len(split), generator=torch.Generator().manual_seed(3))[:50]
    expected = split.x.index_select(0, split.index[rows.sort().values])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        x, _ = model.prepare(expected)
    torch.testing.assert_close(points, x.reshape(50, -1))


def test_em_in_logit_space_is_finite_on_degenerate_images_and_samples_pixels(tmp_path):
    cfg = make_cfg(
        tmp_path,
        ["experiment=mfa_digits", "model/preprocess=dequantize_logit", "trainer.max_epochs=3"],
    )
    metrics = train(cfg)
    model = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert model.preprocess.scale == "logit"
    assert torch.isfinite(torch.tensor([metrics["val/bpd"], metrics["test/bpd"]])).all()
    blank, white = (torch.full((2, 1, 8, 8), v, dtype=torch.uint8) for v in (0, 255))
    with torch.no_grad():
        ll = model.log_likelihood(torch.cat([blank, white]))
        samples = model.sample(16)
    assert torch.isfinite(ll).all()
    assert samples.min() >= 0 and samples.max() <= 255
