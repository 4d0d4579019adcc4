"""Metric kinds in run records: the vocabulary, the defaults by name, and each model family's
own kinds (a bound is never labelled exact)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir

from gmlab.models.vqvae import VQVAEPixelCNN
from gmlab.utils.metric_kinds import kind, metric_kind, stage_kinds

CONF = Path(__file__).resolve().parents[1] / "conf"


def build(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return hydra.utils.instantiate(cfg.model, _convert_="all")


def test_kinds_mark_bounds_and_reject_unknown_names():
    assert kind("iwae_bound", k=5) == {"kind": "iwae_bound", "k": 5, "bound": True}
    assert kind("elbo") == {"kind": "elbo", "bound": True}
    assert kind("vq_bound")["bound"] is True
    assert "bound" not in kind("exact") and "bound" not in kind("accuracy")
    with pytest.raises(ValueError, match="unknown metric kind 'likelihood'"):
        kind("likelihood")
    assert stage_kinds({"bpd": kind("exact")}, ("val", "test")) == {
        "val/bpd": {"kind": "exact"},
        "test/bpd": {"kind": "exact"},
    }


@pytest.mark.parametrize(
    "name, expected",
    [
        ("test/bpd", "exact"),
        ("val/nll", "exact"),
        ("test/acc", "accuracy"),
        ("val/ece", "calibration"),
        ("train/loss", "loss"),
        ("val/codes_used", "count"),
        ("test/ndb", "other"),
        ("lr-Adam", "other"),
    ],
)
def test_default_kind_by_name(name, expected):
    assert metric_kind(name)["kind"] == expected


@pytest.mark.parametrize("model", ["gaussian", "mfa", "mppca", "realnvp"])
def test_exact_models_report_exact_likelihoods(model):
    kinds = build([f"model={model}"]).metric_kinds()
    for name in ("train/bpd", "val/bpd", "val/nll", "test/bpd", "test/nll"):
        assert kinds[name] == {"kind": "exact"}, name


def test_vae_test_metrics_are_iwae_bounds_with_the_configured_k_and_val_the_elbo():
    kinds = build(["model=vae", "model.eval.iwae_k=7", "model.eval.val_iwae_k=3"]).metric_kinds()
    iwae = {"kind": "iwae_bound", "k": 7, "bound": True}
    for name in ("test/bpd", "test/nll", "test/bpd_iwae", "test/nll_iwae"):
        assert kinds[name] == iwae, name
    for name in ("val/bpd", "val/nll", "val/elbo", "test/bpd_elbo", "train/elbo"):
        assert kinds[name] == {"kind": "elbo", "bound": True}, name
    assert kinds["val/nll_iwae"] == {"kind": "iwae_bound", "k": 3, "bound": True}
    assert "val/nll_iwae" not in build(["model=vae"]).metric_kinds()


def test_vqvae_likelihoods_are_the_vq_bound():
    kinds = build(["model=vqvae", "data=digits", "experiment=vqvae_digits"]).metric_kinds()
    for name in ("val/bpd", "val/nll", "test/bpd", "test/nll"):
        assert kinds[name] == {"kind": "vq_bound", "bound": True}, name
    assert kinds["val/codes_used"] == {"kind": "count"}
    stage2 = VQVAEPixelCNN.__new__(VQVAEPixelCNN)  # its kinds need no stage-1 checkpoint
    assert VQVAEPixelCNN.metric_kinds(stage2)["test/bpd"] == {"kind": "vq_bound", "bound": True}


def test_classifier_reports_accuracy_and_calibration():
    kinds = build(["experiment=gmm_classifier_mnist"]).metric_kinds()
    assert kinds["test/acc"] == {"kind": "accuracy"}
    assert kinds["test/ece"] == {"kind": "calibration"}
