"""Each default lives in one place, the YAML presets: a model built in Python without a part
gets the part config that `gmlab-train model=<name>` composes (Hydra's compose API, the
independent reference for `gmlab.models.parts.preset_part`)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gmlab.errors import ConfigError
from gmlab.models import VAE, VQVAE, DiagonalGaussian, GMMClassifier, RealNVP, VQVAEPixelCNN
from gmlab.models import parts as model_parts
from gmlab.models.mfa_finetune import MFAFinetune
from gmlab.models.parts import preset_part

CONF = model_parts.MODEL_CONF.parent
TINY_FLOW = {"_target_": "gmlab.nn.flows.build_realnvp", "num_blocks": 1, "filters": 4}


def tiny_vqvae() -> VQVAE:
    return VQVAE((1, 8, 8), num_codes=4, code_dim=2, hidden=4, downsample=1, res_blocks=1)


# model=<preset>: the model built in Python with that part left out
MODELS = {
    "gaussian": lambda: DiagonalGaussian([1, 8, 8]),
    "vae": lambda: VAE([1, 8, 8], latent_dim=2),
    "realnvp": lambda: RealNVP([1, 8, 8], flow=TINY_FLOW),
    "vqvae": tiny_vqvae,
    "vqvae_pixelcnn": lambda: VQVAEPixelCNN(
        (1, 8, 8), vqvae=dict(tiny_vqvae().hparams), embed_dim=4, num_blocks=1, head_channels=4
    ),
    "mfa_finetune": lambda: MFAFinetune([1, 8, 8], n_components=2, n_factors=1),
    "gmm_classifier": lambda: GMMClassifier([1, 8, 8], 10, features=8),
}
PARTS = [(name, group) for name in MODELS for group in ("optimizer", "lr_scheduler")] + [
    ("vae", "encoder"),
    ("vae", "decoder"),
    ("vae", "likelihood"),
    ("vae", "prior"),
    ("vqvae", "likelihood"),
    ("vqvae", "quantizer"),
    ("gmm_classifier", "trunk"),
    ("gmm_classifier", "head"),
]


def composed(model: str, group: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    return OmegaConf.to_container(cfg.model[group], resolve=True)


@pytest.mark.parametrize(("model", "group"), PARTS)
def test_a_model_built_without_a_part_gets_the_part_its_preset_composes(model, group):
    expected = composed(model, group)
    assert preset_part(model, group) == expected
    assert MODELS[model]().hparams[group] == expected


def test_an_empty_lr_scheduler_is_no_scheduler_not_the_presets():
    """`model/lr_scheduler=none` composes {}: kept, where None takes the preset (StepLR)."""
    assert preset_part("gmm_classifier", "lr_scheduler")["_target_"].endswith("StepLR")
    model = GMMClassifier([1, 8, 8], 10, features=8, lr_scheduler={})
    assert model.hparams.lr_scheduler == {} == composed("vae", "lr_scheduler")
    assert isinstance(model.configure_optimizers(), torch.optim.Adadelta)


def test_the_flow_default_is_the_presets():
    expected = composed("realnvp", "flow")
    assert preset_part("realnvp", "flow") == expected
    assert expected["filters"] == 128 and expected["num_scales"] == 2  # not the tiny test flow


def test_a_model_file_that_overrides_a_part_option_wins_over_the_group_file():
    """gaussian.yaml sets optimizer.lr 0.01 over adam.yaml's 1e-3; the other options stay."""
    adam = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "optimizer" / "adam.yaml"))
    assert adam["lr"] == 1e-3
    assert preset_part("gaussian", "optimizer") == {**adam, "lr": 0.01}


def test_a_missing_preset_is_a_config_error_naming_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(model_parts, "MODEL_CONF", tmp_path)
    with pytest.raises(ConfigError, match="model.optimizer is not set"):
        preset_part("gaussian", "optimizer")
