"""The `Checkpoint` callback: `last.ckpt` follows training even when the metric worsens,
and holds the final weights when training stops between validations. `load_model` on
checkpoints written by gmlab 0.1 (tests/fixtures/checkpoints_v0, `gmlab.models.compat`):
their hyperparameters are converted and the models reproduce the values the old code
computed."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from support.parts import part
from torch.optim.lr_scheduler import StepLR

from gmlab.callbacks import Checkpoint
from gmlab.data import DigitsDataModule
from gmlab.errors import CheckpointMismatchError, ConfigError
from gmlab.models import compat
from gmlab.models.gaussian import DiagonalGaussian
from gmlab.models.gmm_classifier import GMMClassifier
from gmlab.models.realnvp import RealNVP
from gmlab.models.vae import VAE
from gmlab.models.vqvae import VQVAE
from gmlab.utils.checkpoint import load_model


class WorseningModel(L.LightningModule):
    """A linear map whose logged `val/nll` is its epoch number: best at epoch 0, then worse."""

    monitor = "val/nll"

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/nll", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n: int = 8) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(n, 2))
    return torch.utils.data.DataLoader(data, batch_size=4)


def loader_of(x: torch.Tensor) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)


def trainer_with(callback: Checkpoint, **kwargs) -> L.Trainer:
    return L.Trainer(
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def test_last_checkpoint_is_rewritten_after_the_metric_stops_improving(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=1)
    trainer = trainer_with(callback, max_epochs=4)
    trainer.fit(WorseningModel(), train_dataloaders=loader(), val_dataloaders=loader())

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3 and last["global_step"] == 8
    best = torch.load(callback.best_model_path, weights_only=False)
    assert best["epoch"] == 0 and callback.best_model_score == 0.0
    assert not list(tmp_path.glob("*.partial"))


def test_last_checkpoint_holds_the_final_step_when_max_steps_stops_mid_epoch(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=1)
    model = WorseningModel()
    trainer = trainer_with(callback, max_steps=7, check_val_every_n_epoch=2)
    # 4 batches per epoch, validation after epoch 1 (step 8): never reached, so the only
    # save is the one at the end of training.
    trainer.fit(model, train_dataloaders=loader(16), val_dataloaders=loader())

    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == trainer.global_step == 7
    for name, value in model.state_dict().items():
        assert torch.equal(last["state_dict"][name], value), name

    # Later stop: validation at step 8 saved best + last; steps 9..10 are saved at the end.
    callback = Checkpoint(dirpath=tmp_path / "b", save_last=True, save_top_k=1)
    model = WorseningModel()
    trainer = trainer_with(callback, max_steps=10, check_val_every_n_epoch=2)
    trainer.fit(model, train_dataloaders=loader(16), val_dataloaders=loader())
    last = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10
    assert torch.load(callback.best_model_path, weights_only=False)["global_step"] == 8
    assert not list(tmp_path.rglob("*.partial"))


# ------------------------------------------------ checkpoints of the flat-option layout
FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v0"


@pytest.fixture(scope="module")
def reference_batch() -> tuple[dict, torch.Tensor]:
    """reference.json and the batch it was computed on (its README.md)."""
    data = DigitsDataModule(batch_size=8, eval_batch_size=8)
    data.setup("test")
    x, _ = next(iter(data.test_dataloader()))
    return json.loads((FIXTURES / "reference.json").read_text()), x


@pytest.mark.parametrize(
    ("name", "cls", "key"),
    [
        ("gaussian", DiagonalGaussian, "log_likelihood_seed0"),
        ("realnvp", RealNVP, "log_likelihood_seed0"),
        ("gmm", GMMClassifier, "logits"),
    ],
)
def test_flat_option_checkpoints_load_and_reproduce_their_values(reference_batch, name, cls, key):
    reference, x = reference_batch
    raw = torch.load(FIXTURES / f"{name}.ckpt", weights_only=True)
    assert "version" not in raw["gmlab"] and "lr" in raw["hyper_parameters"]  # the old layout
    model = load_model(FIXTURES / f"{name}.ckpt").eval()
    assert type(model) is cls
    assert (
        "lr" not in model.hparams and model.hparams.optimizer["lr"] == raw["hyper_parameters"]["lr"]
    )
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(x) if name == "gmm" else model.log_likelihood(x)
    torch.testing.assert_close(out, torch.tensor(reference[name][key]), rtol=1e-5, atol=1e-4)


def test_migrated_hyperparameters_keep_their_meaning():
    """The old flat options name the same optimizer, schedule and flow as today's parts."""
    gmm = torch.load(FIXTURES / "gmm.ckpt", weights_only=True)["hyper_parameters"]
    hp = compat.gmm_classifier(dict(gmm), 0)
    assert hp["optimizer"]["_target_"] == "torch.optim.Adadelta"
    assert (hp["optimizer"]["lr"], hp["optimizer"]["weight_decay"]) == (
        gmm["lr"],
        gmm["weight_decay"],
    )
    assert hp["lr_scheduler"]["step_size"] == gmm["lr_step_size"]
    assert (hp["lr_scheduler"]["gamma"], hp["lr_scheduler"]["interval"]) == (
        gmm["lr_gamma"],
        "epoch",
    )
    assert compat.gmm_classifier({**gmm, "lr_gamma": None}, 0)["lr_scheduler"] == {}
    sgd = compat.gmm_classifier({**gmm, "optimizer": "sgd"}, 0)["optimizer"]
    assert sgd["_target_"] == "torch.optim.SGD" and sgd["momentum"] == 0.9

    flat = torch.load(FIXTURES / "realnvp.ckpt", weights_only=True)["hyper_parameters"]
    hp = compat.realnvp(dict(flat), 0)
    flow_keys = {"num_scales", "num_blocks", "filters", "alpha", "norm", "channels_last"}
    assert {k: hp["flow"][k] for k in flow_keys} == {k: flat[k] for k in flow_keys}
    assert not flow_keys & set(hp)
    assert hp["lr_scheduler"]["_target_"] == "gmlab.utils.lr_schedule.WarmupStableDecay"
    assert compat.realnvp(hp, RealNVP.checkpoint_version) == hp  # current: unchanged


def test_new_checkpoints_record_their_version(tmp_path):
    model = DiagonalGaussian([1, 8, 8])
    trainer = trainer_with(Checkpoint(dirpath=tmp_path, save_last=True), max_steps=1)
    trainer.fit(model, train_dataloaders=loader_of(torch.zeros(4, 1, 8, 8, dtype=torch.uint8)))
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert raw["gmlab"] == {
        "class": "gmlab.models.gaussian.DiagonalGaussian",
        "version": DiagonalGaussian.checkpoint_version,
    }
    assert isinstance(load_model(tmp_path / "last.ckpt"), DiagonalGaussian)


def test_every_registered_conversion_names_a_class_that_raised_its_version():
    """The registry's keys are the names checkpoints record; each class is importable under
    its name and has a version to convert to (a renamed class would orphan its entry)."""
    for name in compat.HPARAMS:
        module, _, qualname = name.rpartition(".")
        cls = getattr(__import__(module, fromlist=[qualname]), qualname)
        assert f"{cls.__module__}.{cls.__qualname__}" == name
        assert compat.current_version(name) == cls.checkpoint_version >= 1


def test_a_current_checkpoint_passes_the_upgrade_unchanged():
    """(Converted as version 0, RealNVP's options would lose their flow.)"""
    flow = {"_target_": "gmlab.nn.flows.build_realnvp", "num_scales": 1, "num_blocks": 1}
    model = RealNVP([1, 8, 8], flow={**flow, "filters": 4})
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    hparams, info = dict(checkpoint["hyper_parameters"]), dict(checkpoint["gmlab"])
    compat.upgrade_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"] == hparams and checkpoint["gmlab"] == info
    assert checkpoint["state_dict"].keys() == model.state_dict().keys()


def saved_as(model: L.LightningModule, version: int, **hparams) -> dict:
    """`model`'s checkpoint dict as an older gmlab wrote it: recorded as `version`, with
    `hparams` over its hyperparameters."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    checkpoint["hyper_parameters"].update(hparams)
    checkpoint["gmlab"]["version"] = version
    return checkpoint


def vqvae_checkpoint_of_version_one(model: VQVAE, likelihood: str) -> dict:
    """`model` as gmlab 0.1 saved it in its last layout: the likelihood by name, version 1."""
    return saved_as(model, 1, likelihood=likelihood)


@pytest.mark.parametrize("name", ["discretized_logistic", "gaussian_fixed"])
def test_a_vqvae_that_named_its_likelihood_loads_with_that_likelihood(tmp_path, name):
    """Before the likelihood group, conf/model/vqvae.yaml passed a name: the file loads with
    the likelihood of that name and computes what the model did."""
    likelihood = part("likelihood", name)
    torch.manual_seed(0)
    model = VQVAE((1, 8, 8), likelihood=likelihood, num_codes=4, code_dim=2, hidden=4).eval()
    torch.save(vqvae_checkpoint_of_version_one(model, name), tmp_path / "v1.ckpt")
    loaded = load_model(tmp_path / "v1.ckpt").eval()
    assert loaded.hparams.likelihood["_target_"] == likelihood["_target_"]
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    values = []
    for each in (loaded, model):
        torch.manual_seed(1)  # the same dequantization noise
        with torch.no_grad():
            values.append(each.log_likelihood(x))
    torch.testing.assert_close(*values)


def test_an_unknown_likelihood_name_is_a_config_error_naming_the_choices(tmp_path):
    model = VQVAE((1, 8, 8), num_codes=4, code_dim=2, hidden=4)
    torch.save(vqvae_checkpoint_of_version_one(model, "poisson"), tmp_path / "v1.ckpt")
    with pytest.raises(ConfigError, match="unknown model.likelihood 'poisson'.*bernoulli"):
        load_model(tmp_path / "v1.ckpt")


def test_a_damaged_old_checkpoint_is_a_checkpoint_error(tmp_path):
    raw = torch.load(FIXTURES / "gmm.ckpt", weights_only=True)
    raw["hyper_parameters"]["optimizer"] = "rmsprop"  # no such name in gmlab 0.1
    torch.save(raw, tmp_path / "gmm.ckpt")
    with pytest.raises(CheckpointMismatchError, match="written by an older gmlab: KeyError"):
        load_model(tmp_path / "gmm.ckpt")


@pytest.mark.parametrize("prior", ["made", "vamp"])
def test_a_vae_whose_network_prior_lived_in_nn_priors_loads_with_that_prior(tmp_path, prior):
    """Before gmlab 0.2 the MADE-flow prior and the VampPrior were in `gmlab.nn.priors`
    (VAE version 1): such a file loads with today's class and computes what the model did."""
    torch.manual_seed(0)
    spec = {**part("prior", prior), **({"n_components": 3} if prior == "vamp" else {})}
    model = VAE((1, 8, 8), latent_dim=2, prior=spec, eval={"iwae_k": 10}).eval()
    name = spec["_target_"].rpartition(".")[2]
    old_prior = {**spec, "_target_": f"gmlab.nn.priors.{name}"}
    torch.save(saved_as(model, 1, prior=old_prior), tmp_path / "v1.ckpt")

    loaded = load_model(tmp_path / "v1.ckpt").eval()
    assert loaded.hparams.prior["_target_"] == f"gmlab.nn.network_priors.{name}"
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    values = []
    for each in (loaded, model):
        torch.manual_seed(1)  # the same dequantization and posterior noise
        with torch.no_grad():
            values.append(each.log_likelihood(x))
    torch.testing.assert_close(*values)


def test_a_part_left_out_of_an_older_file_keeps_the_meaning_it_had(tmp_path):
    """Before version 3, a VQ-VAE without a quantizer had the gradient-trained codebook and a
    classifier with a null lr_scheduler a constant lr; today a left-out part is the preset's
    (EMA codebook, StepLR). The files load with what they trained with."""
    vq = VQVAE((1, 8, 8), num_codes=4, code_dim=2, hidden=4)
    classifier = GMMClassifier([1, 8, 8], 10, features=8)
    assert type(vq.quantizer).__name__ == "EMAVectorQuantizer"
    assert isinstance(classifier.configure_optimizers()["lr_scheduler"]["scheduler"], StepLR)
    for model, key, name in ((vq, "quantizer", "vq"), (classifier, "lr_scheduler", "gmm")):
        checkpoint = saved_as(model, 2, **{key: None})
        if name == "vq":  # the gradient codebook has no EMA statistics
            state = checkpoint["state_dict"]
            for extra in ("quantizer.cluster_size", "quantizer.embed_sum"):
                state.pop(extra)
        torch.save(checkpoint, tmp_path / f"{name}.ckpt")
    assert type(load_model(tmp_path / "vq.ckpt").quantizer).__name__ == "VectorQuantizer"
    loaded = load_model(tmp_path / "gmm.ckpt")
    assert loaded.hparams.lr_scheduler == {}
    assert isinstance(loaded.configure_optimizers(), torch.optim.Adadelta)


# GMMClassifier's version-1 layout: the trunk's and the head's options flat, the head by name
CLASSIFIER_V1 = {
    "images": (
        {
            "data_shape": [1, 8, 8], "num_classes": 10, "head": "gmm", "features": 8,
            "channels": [2, 4], "kernel_size": 3, "dropout": 0.1, "components_per_class": 1,
            "dim": 6, "covariance": "diag", "rank": None, "floor": 0.01,
            "feature_norm": "batch", "head_refit": "eval",
        },
        {
            "trunk": {"_target_": "gmlab.nn.MnistCNN", "channels": [2, 4], "kernel_size": 3,
                      "dropout": 0.1},
            "head": {"_target_": "gmlab.nn.GaussianMixtureClassifier", "covariance": "diag",
                     "dim": 6, "floor": 0.01},
            "features": 8, "feature_norm": "batch", "head_refit": "eval",
        },
    ),
    "points": (
        {"data_shape": [2], "num_classes": 3, "head": "linear", "features": 128},
        {
            "trunk": {"_target_": "gmlab.models.gmm_classifier.IdentityTrunk"},
            "head": {"_target_": "gmlab.nn.gmm_layer.LinearClassifier"},
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CLASSIFIER_V1)
def test_a_classifier_of_the_flat_layout_loads_with_the_same_trunk_and_head(tmp_path, case):
    """A version-1 GMMClassifier checkpoint (options flat, `head: gmm | linear`) loads as
    the classifier built from the equivalent parts, and computes what it does."""
    flat, parts = CLASSIFIER_V1[case]
    torch.manual_seed(0)
    model = GMMClassifier(flat["data_shape"], flat["num_classes"], **parts).eval()
    checkpoint = saved_as(model, 1)
    checkpoint["hyper_parameters"] = {**flat, "optimizer": part("optimizer", "adadelta")}
    torch.save(checkpoint, tmp_path / "v1.ckpt")
    loaded = load_model(tmp_path / "v1.ckpt").eval()
    assert type(loaded.trunk) is type(model.trunk) and type(loaded.head) is type(model.head)
    assert {k: loaded.hparams.trunk.get(k) for k in parts["trunk"]} == parts["trunk"]
    assert {k: loaded.hparams.head.get(k) for k in parts["head"]} == parts["head"]
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8) if case == "images" else None
    x = torch.randn(6, 2) if x is None else x
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert compat.gmm_classifier(dict(loaded.hparams), GMMClassifier.checkpoint_version) == dict(
        loaded.hparams
    )
