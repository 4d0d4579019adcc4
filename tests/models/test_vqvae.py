"""VQ-VAE and its Gated PixelCNN stage: the bits/dim bound against the exact marginal
likelihood, two-stage training on digits (stage 2 finding stage 1's checkpoint by itself,
also as one multirun command), self-contained checkpoints, checkpoints written before the
quantizer parts, presets, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from support.cli import gmlab
from support.compose import train_config
from support.parts import mlp_parts
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmlab.data.digits import DigitsDataModule
from gmlab.errors import ConfigError
from gmlab.models.vae import VAE
from gmlab.models.vqvae import VQVAE, VQVAEPixelCNN
from gmlab.nn.ema_quantizer import EMAVectorQuantizer
from gmlab.nn.vector_quantizer import VectorQuantizer
from gmlab.train import train
from gmlab.utils.checkpoint import load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
V0 = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints_v0"


def save_untrained(model: L.LightningModule, path) -> str:
    """A checkpoint of `model` as gmlab-train writes one (weights, hyperparameters, class)."""
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return str(path)


def one_code_vqvae(num_codes: int = 5) -> VQVAE:
    """A VQ-VAE whose 1 x 2 x 2 images have a single code (1 x 1 grid), bin-centre inputs."""
    torch.manual_seed(0)
    model = VQVAE(
        (1, 2, 2),
        {"dequantize": False, "scale": "symmetric"},
        num_codes=num_codes,
        code_dim=3,
        hidden=8,
        downsample=1,
        res_blocks=1,
    )
    with torch.no_grad():
        model.quantizer.codebook.normal_()
    return model.eval()


def per_code_log_likelihoods(model: VQVAE, x_raw: torch.Tensor) -> torch.Tensor:
    """[B, K] log p(x | e_k) + log-det for every code k of a 1 x 1 grid, by enumeration."""
    x, log_det = model.prepare(x_raw)
    codebook = model.quantizer.codebook[:, :, None, None]  # [K, D, 1, 1]
    params = model.decode(codebook)  # [K, P, C, H, W]
    return (
        torch.stack([model.likelihood.log_prob(x, p[None]) for p in params], 1) + log_det[:, None]
    )


def test_stage_one_bound_is_the_nearest_codes_term_of_the_exact_marginal():
    model = one_code_vqvae()
    x_raw = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    with torch.no_grad():
        terms = per_code_log_likelihoods(model, x_raw) - math.log(5)  # uniform p(z)
        exact = torch.logsumexp(terms, 1)
        bound = model.log_likelihood(x_raw)
        z_e = model.encoder(model.prepare(x_raw)[0]).flatten(1)  # [B, D]
    nearest = torch.cdist(z_e.double(), model.quantizer.codebook.double()).argmin(1)
    assert torch.allclose(bound, terms[torch.arange(6), nearest], atol=1e-4)
    assert (bound <= exact + 1e-5).all()
    bits = model.to_bits(bound)
    assert torch.allclose(bits, -(bound - 4 * math.log(256)) / (4 * math.log(2)), atol=1e-5)


def test_stage_two_bound_uses_the_pixelcnn_prior():
    stage_one = one_code_vqvae()
    model = VQVAEPixelCNN((1, 2, 2), vqvae=dict(stage_one.hparams), num_blocks=1, channels=8)
    model.vqvae.load_state_dict(stage_one.state_dict())
    x_raw = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    with torch.no_grad():
        model.prior.head[-1].bias.copy_(torch.randn(5) * 2)  # a non-uniform p(z)
        log_prior = torch.log_softmax(
            model.prior(torch.zeros(1, 1, 1, dtype=torch.long))[0, :, 0, 0], 0
        )
        terms = per_code_log_likelihoods(stage_one, x_raw) + log_prior  # first position: no context
        bound = model.log_likelihood(x_raw)
        codes = stage_one.codes(x_raw).flatten()
    assert torch.allclose(bound, terms[torch.arange(6), codes], atol=1e-4)
    assert (bound <= torch.logsumexp(terms, 1) + 1e-5).all()


def test_two_stages_train_on_digits_and_the_prior_beats_uniform_codes(tmp_path):
    quick = ["trainer.max_epochs=12", "trainer.deterministic=true", "seed=3"]
    stage_one = train(train_config(tmp_path / "vq", ["experiment=vqvae_digits", *quick]))
    assert 0 < stage_one["test/bpd"] < 6.0  # 8 bits/dim: a uniform density over the levels
    assert stage_one["val/codes_used"] > 4 and stage_one["val/perplexity"] > 3
    # the moving-average codebook with revival keeps its codes alive: of 32, the 360 val
    # digits showed 31-32 over seeds 1-4 and the Adam variants, 30 in the 60-epoch preset
    assert stage_one["val/codes_used"] >= 30
    best = str(next((tmp_path / "vq" / "checkpoints").glob("best-*.ckpt")))
    (tmp_path / "other").mkdir()  # not a run: skipped by the search
    # model.vqvae_ckpt=auto (the preset's): the best stage-1 checkpoint among this run's siblings
    stage_two = train(train_config(tmp_path / "pcnn", ["experiment=vqvae_pixelcnn_digits", *quick]))
    # same decoder term, the learned prior in place of log(1/K) per code
    assert stage_two["test/bpd"] < stage_one["test/bpd"] - 0.1, (stage_one, stage_two)
    events = EventAccumulator(str(tmp_path / "vq" / "tensorboard"), size_guidance={"histograms": 0})
    assert "val/codes" in events.Reload().Tags()["histograms"]  # the codebook's use
    images = tmp_path / "pcnn" / "images"
    assert {"samples", "samples_uniform_codes", "reconstructions"} <= {
        p.name for p in images.iterdir()
    }

    # the stage-2 checkpoint holds the VQ-VAE: it rebuilds after the stage-1 file is gone
    stage_one_weights = read_checkpoint(best)["state_dict"]
    (tmp_path / "vq").rename(tmp_path / "moved")
    model = load_model(next((tmp_path / "pcnn" / "checkpoints").glob("best-*.ckpt")))
    assert isinstance(model, VQVAEPixelCNN) and model.hparams.vqvae_ckpt == best
    for key, value in stage_one_weights.items():
        assert torch.equal(model.vqvae.state_dict()[key], value), key
    samples = model.sample(4)
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 255
    assert all(not p.requires_grad for p in model.vqvae.parameters())


@pytest.mark.parametrize("data", ["cifar10", "svhn", "digits"])
def test_presets_build_both_stages(tmp_path, data):
    cfg = train_config(tmp_path, [f"experiment=vqvae_{data}"])
    stage_one = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(stage_one, VQVAE) and stage_one.preprocess.scale == "symmetric"
    if data != "digits":  # vae-pytorch's settings
        assert (stage_one.num_codes, stage_one.hparams.code_dim) == (128, 256)
        assert stage_one.grid_shape == (8, 8)
        assert (cfg.data.batch_size, stage_one.hparams.optimizer["lr"]) == (128, 1e-3)
    path = save_untrained(stage_one, tmp_path / "stage1.ckpt")
    cfg = train_config(tmp_path, [f"experiment=vqvae_pixelcnn_{data}", f"model.vqvae_ckpt={path}"])
    stage_two = hydra.utils.instantiate(cfg.model, _convert_="all")
    if data != "digits":
        assert stage_two.prior.embedding.embedding_dim == 64
        assert 10 <= len(stage_two.prior.layers) - 1 <= 15
        assert stage_two.prior.head[1].out_channels == 512
    x = torch.zeros(2, *stage_two.data_shape, dtype=torch.uint8)
    with torch.no_grad():
        assert torch.isfinite(stage_two.log_likelihood(x)).all()


def test_stage_two_finds_the_newest_matching_stage_one_checkpoint(tmp_path):
    def run(name: str, model: L.LightningModule) -> str:
        folder = tmp_path / name / "checkpoints"
        folder.mkdir(parents=True)
        return save_untrained(model, folder / "best-001.ckpt")

    older = run("a", VQVAE((1, 8, 8), num_codes=4, code_dim=2, hidden=4, downsample=1))
    run("b", VQVAE((1, 16, 16), num_codes=4, code_dim=2, hidden=4, downsample=1))  # other shape
    run("c", VAE((1, 8, 8), latent_dim=2, **mlp_parts([8])))  # not a VQ-VAE
    stage_two = VQVAEPixelCNN((1, 8, 8), "auto", str(tmp_path), num_blocks=1)
    assert stage_two.hparams.vqvae_ckpt == older
    newer = run("d", VQVAE((1, 8, 8), num_codes=5, code_dim=2, hidden=4, downsample=1))
    assert VQVAEPixelCNN((1, 8, 8), "auto", str(tmp_path), num_blocks=1).vqvae.num_codes == 5
    by_run = VQVAEPixelCNN((1, 8, 8), str(tmp_path / "a"), num_blocks=1)  # a run directory
    assert by_run.hparams.vqvae_ckpt == older and newer != older
    with pytest.raises(ConfigError, match="auto found no VQ-VAE checkpoint of \\[1, 28, 28\\]"):
        VQVAEPixelCNN((1, 28, 28), "auto", str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory without checkpoints"):
        VQVAEPixelCNN((1, 8, 8), str(tmp_path))


def test_auto_takes_the_stage_one_run_of_the_same_data_not_only_the_same_shape(tmp_path, caplog):
    """MNIST and Fashion-MNIST are both 1x28x28: auto matches the run's data config."""
    mnist = {"_target_": "gmlab.data.MNISTDataModule", "shape": [1, 8, 8], "root": "/a"}
    fashion = {**mnist, "_target_": "gmlab.data.FashionMNISTDataModule"}

    def run(name: str, data: dict, num_codes: int) -> str:
        folder = tmp_path / name / "checkpoints"
        folder.mkdir(parents=True)
        model = VQVAE((1, 8, 8), num_codes=num_codes, code_dim=2, hidden=4, downsample=1)
        path = save_untrained(model, folder / "best-001.ckpt")
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["gmlab"]["config"] = {"data": data}
        torch.save(checkpoint, path)
        return path

    on_mnist = run("a", mnist, 4)
    run("b", fashion, 5)  # newer, same shape, other data
    here = {**mnist, "root": "/elsewhere", "batch_size": 7}  # loading keys do not count
    stage_two = VQVAEPixelCNN((1, 8, 8), "auto", str(tmp_path), num_blocks=1, data=here)
    assert stage_two.hparams.vqvae_ckpt == on_mnist and stage_two.vqvae.num_codes == 4
    run("c", mnist, 6)
    with caplog.at_level("WARNING"):
        stage_two = VQVAEPixelCNN((1, 8, 8), "auto", str(tmp_path), num_blocks=1, data=here)
    assert stage_two.vqvae.num_codes == 6  # the newest of the two matches, said in one line
    assert [r.getMessage() for r in caplog.records if "2 stage-1 runs" in r.getMessage()]
    cifar = {**mnist, "_target_": "gmlab.data.CIFAR10DataModule"}
    with pytest.raises(ConfigError, match="no VQ-VAE checkpoint of gmlab.data.CIFAR10DataModule"):
        VQVAEPixelCNN((1, 8, 8), "auto", str(tmp_path), num_blocks=1, data=cifar)


@pytest.mark.slow
def test_both_stages_as_one_multirun_command(tmp_path, run_env):
    tiny = [
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
    ]
    sweep = tmp_path / "sweep"
    gmlab(
        "gmlab-train",
        [
            "-m",
            "experiment=vqvae_digits,vqvae_pixelcnn_digits",
            *tiny,
            "logger=csv",
            "test=false",
            f"hydra.sweep.dir={sweep}",
            "~callbacks.progress_bar",
        ],
        run_env,
    )
    stage_one = next((sweep / "0" / "checkpoints").glob("best-*.ckpt"))
    model = load_model(next((sweep / "1" / "checkpoints").glob("best-*.ckpt")))
    assert isinstance(model, VQVAEPixelCNN) and model.hparams.vqvae_ckpt == str(stage_one)


def test_checkpoints_written_before_the_quantizer_parts_still_load(tmp_path):
    """tests/fixtures/checkpoints_v0/vqvae.ckpt (flat options, a gradient codebook without
    init or revival state) reproduces its reference log-likelihoods; so does a stage-2
    checkpoint of that time embedding it."""
    x = next(iter(DigitsDataModule(batch_size=8, eval_batch_size=8).test_dataloader()))[0]
    reference = torch.tensor(
        json.loads((V0 / "reference.json").read_text())["vqvae"]["log_likelihood_seed0"]
    )
    old = load_model(V0 / "vqvae.ckpt").eval()
    assert isinstance(old.quantizer, VectorQuantizer) and not isinstance(
        old.quantizer, EMAVectorQuantizer
    )
    assert bool(old.quantizer.initialized) and old.quantizer.dead_after is None
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(old.log_likelihood(x), reference, rtol=1e-5, atol=1e-4)

    saved = read_checkpoint(V0 / "vqvae.ckpt")
    assert "lr" in saved["hyper_parameters"] and "version" not in saved["gmlab"]
    assert (
        "lr" not in old.hparams and old.hparams.optimizer["lr"] == saved["hyper_parameters"]["lr"]
    )
    stage_two = VQVAEPixelCNN(old.data_shape, vqvae=dict(old.hparams), num_blocks=1)
    state = {k: v for k, v in stage_two.state_dict().items() if not k.startswith("vqvae.")}
    state.update({f"vqvae.{k}": v for k, v in saved["state_dict"].items()})  # as then written
    flat = {k: v for k, v in stage_two.hparams.items() if k not in ("optimizer", "lr_scheduler")}
    checkpoint = {  # the layout of that time: flat options here and in the embedded VQ-VAE
        "state_dict": state,
        "hyper_parameters": {
            **flat,
            "lr": 3e-4,
            "lr_schedule": {},
            "vqvae": saved["hyper_parameters"],
        },
        "pytorch-lightning_version": L.__version__,
    }
    stage_two.on_save_checkpoint(checkpoint)
    del checkpoint["gmlab"]["version"]
    torch.save(checkpoint, tmp_path / "stage2.ckpt")
    model = load_model(tmp_path / "stage2.ckpt").eval()
    assert (
        model.hparams.optimizer["lr"] == 3e-4
        and model.vqvae.hparams.optimizer["lr"] == old.hparams.optimizer["lr"]
    )
    assert model.hparams.lr_scheduler["_target_"].endswith("WarmupStableDecay")
    assert [p.data_ptr() for p in model.optimizer_parameters()] == [
        p.data_ptr() for p in model.prior.parameters()
    ]
    torch.manual_seed(0)
    with torch.no_grad():
        recon, codes = model.vqvae.reconstruction_log_prob(x)
        torch.testing.assert_close(
            recon + model.vqvae.code_log_prob(codes), reference, rtol=1e-5, atol=1e-4
        )


def test_the_quantizer_group_and_the_seed_setting(tmp_path):
    cfg = train_config(tmp_path, ["experiment=vqvae_digits"])
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(model.quantizer, EMAVectorQuantizer)
    assert model.hparams.quantizer["_target_"] == "gmlab.nn.ema_quantizer.EMAVectorQuantizer"
    assert type(model.hparams.quantizer) is dict  # plain data in the checkpoint
    assert (model.quantizer.num_codes, model.quantizer.dim) == (32, 32)
    seed = train_config(tmp_path, ["experiment=vqvae_digits", "model/quantizer=gradient"])
    model = hydra.utils.instantiate(seed.model, _convert_="all")
    assert type(model.quantizer) is VectorQuantizer and model.quantizer.init == "uniform"
    assert model.quantizer.dead_after is None and model.quantizer.codebook.requires_grad
    assert model.quantizer.codebook.abs().max() <= 1 / 32


def test_bad_configurations_are_clear_errors(tmp_path):
    with pytest.raises(Exception) as info:  # wrapped by Hydra; the CLI prints the GmlabError
        train(train_config(tmp_path, ["experiment=vqvae_pixelcnn_digits"]))
    assert isinstance(info.value.__cause__, ConfigError)
    assert "vqvae_ckpt=auto found no VQ-VAE checkpoint" in str(info.value.__cause__)
    with pytest.raises(ConfigError, match="model.quantizer"):
        VQVAE(
            (1, 8, 8),
            quantizer={"_target_": "gmlab.nn.vector_quantizer.VectorQuantizer", "init": "x"},
        )
    with pytest.raises(ConfigError, match="model.vqvae_ckpt is required"):
        VQVAEPixelCNN((1, 8, 8))
    vae = VAE((1, 8, 8), latent_dim=2, **mlp_parts([8]))
    with pytest.raises(ConfigError, match="holds a VAE, not a VQVAE"):
        VQVAEPixelCNN((1, 8, 8), vqvae_ckpt=save_untrained(vae, tmp_path / "vae.ckpt"))
    small = VQVAE((1, 8, 8), num_codes=4, code_dim=2, hidden=4, downsample=1)
    with pytest.raises(
        ConfigError, match=r"trained on \[1, 8, 8\] images, the data are \[1, 16, 16\]"
    ):
        VQVAEPixelCNN((1, 16, 16), vqvae_ckpt=save_untrained(small, tmp_path / "vq.ckpt"))
    with pytest.raises(ConfigError, match="downsample=4 needs H and W divisible by 16"):
        VQVAE((1, 8, 8), downsample=4)
    with pytest.raises(ConfigError, match="models \\[C, H, W\\] images"):
        VQVAE((2,))
