"""GPU code paths (skipped without CUDA): the EM statistics on the GPU equal the CPU's, and
every model family trains on one GPU through `gmlab-train`'s code path, writes checkpoints
that load on the CPU, and gives there the outputs it gives on the GPU."""

from __future__ import annotations

import pytest
import torch
from support.compose import train_config
from support.devices import NEEDS_GPU
from support.em import stats_of

from gmlab.data import DigitsDataModule
from gmlab.distributions.mfa import MixtureOfFactorAnalyzers, init_rnd_samples, m_step
from gmlab.models.gmm_classifier import GMMClassifier
from gmlab.models.vae import VAE
from gmlab.train import train
from gmlab.utils.checkpoint import load_model

pytestmark = NEEDS_GPU


def em_step(x: torch.Tensor, mfa: MixtureOfFactorAnalyzers, noise: str) -> dict:
    gauss, stats = stats_of(mfa, x, batch=300)
    new = m_step(stats, gauss, noise)
    new.pop("reseeded")
    return {"log_lik": stats.log_lik / len(x), **new}


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_em_step_on_gpu_matches_cpu(noise):
    x, _ = DigitsDataModule().tensors("train")
    x = (x.flatten(1).double() + torch.rand(x.shape[0], 64, dtype=torch.float64)) / 256
    x = x.float()
    mfa = MixtureOfFactorAnalyzers(5, 64, 3, noise)
    mfa.set_params(**init_rnd_samples(x, 5, 3, seed=0))
    cpu = em_step(x, mfa, noise)
    gpu = em_step(x.cuda(), mfa.cuda(), noise)
    for name, value in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), value, rtol=2e-4, atol=2e-4, msg=name)


MODELS = {
    "mfa": ["model.n_components=4", "model.n_factors=2"],
    "mppca": ["model.n_components=4", "model.n_factors=2"],
    "gmm_classifier": ["model.features=32"],
    "vae": [],
    "vae_mog": ["model.prior.n_components=10"],
    "vlae": ["model/encoder=mlp", "model/decoder=mlp", "model.prior.hidden=[32,32]"],  # 8x8
    "realnvp": ["model.flow.num_blocks=1", "model.flow.filters=8"],
}


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_on_gpu_and_its_checkpoint_loads_on_cpu(tmp_path, name):
    cfg = train_config(
        tmp_path,
        [
            f"model={name}", "data=digits", "trainer=gpu", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", *MODELS[name],
        ],
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    model = load_model(tmp_path / "checkpoints" / "last.ckpt").eval()
    assert next(model.parameters()).device.type == "cpu"
    x, _ = DigitsDataModule().tensors("test")
    on_cpu = deterministic_output(model, x[:64])
    on_gpu = deterministic_output(model.cuda(), x[:64].cuda()).cpu()
    assert torch.isfinite(on_cpu).all()
    # RealNVP's s/t nets run in bf16 on the GPU (model.amp=auto): ~3 significant digits
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0.02, atol=0.05)


@torch.no_grad()
def deterministic_output(model, x: torch.Tensor) -> torch.Tensor:
    """A noise-free function of the raw batch: class log-posteriors for the classifier, the
    posterior (mu, log-variance) for VAEs, else log p of the pixels' bin centres."""
    if isinstance(model, GMMClassifier):
        return model(x)
    if isinstance(model, VAE):
        y, _ = model.prepare(x)
        return torch.cat(model.encode(y), -1)
    model.preprocess.dequantize = False
    return model.log_likelihood(x)
