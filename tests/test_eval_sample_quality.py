"""`gmlab-eval ... sample_quality=mnist` on the bundled digits: a tiny classifier trained here
is the feature network; the scores, their kinds, TensorBoard and the user errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.linalg import sqrtm
from support.cli import gmlab

from gmlab.api import fit
from gmlab.data import DigitsDataModule
from gmlab.data.ood import Digits28DataModule
from gmlab.errors import CheckpointMismatchError, ConfigError, ShapeError
from gmlab.metrics.sample_quality import FEATURE_SCORES, draw_samples, sample_quality

pytestmark = pytest.mark.usefixtures("one_thread")
CONF = Path(__file__).resolve().parents[1] / "conf" / "sample_quality" / "mnist.yaml"
QUIET = ["~callbacks.progress_bar", "~callbacks.model_summary", "logger=csv", "data=digits"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A classifier (the feature network) and an MFA, both on the 8x8 digits, in seconds."""
    root = tmp_path_factory.mktemp("runs")
    classifier = fit(
        ["model=gmm_classifier", "model/head=linear", "trainer.max_epochs=1", *QUIET],
        root / "classifier",
    )
    mfa = fit(["model=mfa", "trainer.max_epochs=1", *QUIET], root / "mfa")
    return classifier, mfa


def config(**options):
    """conf/sample_quality/mnist.yaml, small enough for 8x8 digits, with `options`."""
    cfg = OmegaConf.load(CONF)
    cfg.merge_with({"num_samples": 300, "kid_subsets": 10, "ndb_bins": 10, **options})
    return cfg


def checkpoint(run) -> Path:
    return next((run.run_dir / "checkpoints").glob("best-*.ckpt"))


def test_errors_name_the_problem(runs, tmp_path):
    classifier, mfa = runs
    digits = DigitsDataModule()
    with pytest.raises(ConfigError, match="experiment=features_mnist"):
        sample_quality(mfa.model, digits, config())  # no feature network given
    with pytest.raises(CheckpointMismatchError, match="no checkpoint at"):
        sample_quality(mfa.model, digits, config(features_ckpt=str(tmp_path / "none.ckpt")))
    with pytest.raises(ConfigError, match="holds a MFAModel, not a gmlab image classifier"):
        sample_quality(mfa.model, digits, config(features_ckpt=str(checkpoint(mfa))))
    features = str(classifier.run_dir)  # a run folder names its best checkpoint
    with pytest.raises(ShapeError, match=r"trained on images of shape \[1, 8, 8\].*\[1, 28, 28\]"):
        sample_quality(mfa.model, Digits28DataModule(), config(features_ckpt=features))
    with pytest.raises(ConfigError, match="GMMClassifier cannot sample"):
        sample_quality(classifier.model, digits, config(features_ckpt=features))
    with pytest.raises(ConfigError, match="MFAModel samples without a temperature"):
        sample_quality(mfa.model, digits, config(features_ckpt=features, temperature=0.7))
    with pytest.raises(ConfigError, match="inception_weights"):
        sample_quality(mfa.model, digits, config(features="inception"))


def test_data_without_images_has_no_feature_network():
    from support.callbacks import PointsDataModule

    points = PointsDataModule(shape=[2], val_size=64)
    with pytest.raises(ShapeError, match=r"need image data with a feature network.*\[2\]"):
        sample_quality(None, points, config())


class Sampler(torch.nn.Module):
    """A model with a temperature: grey images whose value is 100 x temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        self.calls.append((n, temperature))
        return torch.full((n, 1, 2, 2), 100.0 * temperature + 0.4)


def test_samples_are_drawn_in_batches_with_the_temperature_and_rounded_to_pixels():
    model = Sampler()
    samples = draw_samples(model, 7, 1.5, batch_size=3)
    assert model.calls == [(3, 1.5), (3, 1.5), (1, 1.5)]
    assert samples.dtype == torch.uint8 and samples.shape == (7, 1, 2, 2)
    assert (samples == 150).all()
    assert (draw_samples(model, 2, None, 5) == 100).all() and model.calls[-1] == (2, 1.0)
    assert (draw_samples(model, 1, 9.0, 5) == 255).all()  # clamped to the pixel range


def features_of(classifier, images) -> np.ndarray:
    with torch.no_grad():
        return classifier.features(images).double().numpy()


def fd_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    s1, s2 = np.cov(a.T), np.cov(b.T)
    root = sqrtm(s1)
    cross = sqrtm(root @ s2 @ root).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


@pytest.mark.slow
def test_gmlab_eval_prints_scores_beside_the_real_floor(runs, tmp_path, run_env):
    classifier, mfa = runs
    out = tmp_path / "eval"
    run_env["OMP_NUM_THREADS"] = "1"
    args = [
        f"ckpt_path={checkpoint(mfa)}",
        "sample_quality=mnist",
        f"sample_quality.features_ckpt={classifier.run_dir}",
        "sample_quality.num_samples=400",
        "sample_quality.kid_subsets=10",
        "sample_quality.ndb_bins=10",
        f"hydra.run.dir={out}",
    ]
    printed = gmlab("gmlab-eval", args, run_env).stdout
    metrics = json.loads((out / "metrics.json").read_text())
    scores = [*FEATURE_SCORES, "ndb", "ndb_over_k"]
    for name in scores:
        model, floor = metrics[f"sample_quality/{name}"], metrics[f"sample_quality/{name}_floor"]
        assert any(
            line.split()[:1] == [name] and f"{model:.5g}" in line and f"{floor:.5g}" in line
            for line in printed.splitlines()
        ), name
    assert "floor (val)" in printed and "test/bpd" in metrics

    # the floor (val vs test) on the classifier's trunk, recomputed with numpy / scipy
    digits = DigitsDataModule()
    test = features_of(classifier.model, digits.tensors("test")[0])
    val = features_of(classifier.model, digits.tensors("val")[0])
    assert metrics["sample_quality/fd_floor"] == pytest.approx(fd_by_hand(val, test), rel=1e-4)

    kinds = json.loads((out / "run.json").read_text())["metric_kinds"]
    digest = hashlib.sha256(checkpoint(classifier).read_bytes()).hexdigest()[:16]
    assert kinds["sample_quality/fd"] == {
        "kind": "frechet_distance",
        "better": "lower",
        "features": f"classifier:{digest}",
        "samples": 400,
        "reference": "test",
    }
    assert kinds["sample_quality/recall_floor"]["samples"] == "val"
    assert kinds["sample_quality/ndb_over_k"]["features"] == "pixels"
    assert kinds["test/bpd"] == {"kind": "exact"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "sample_quality/samples" in events.Tags()["images"]
    assert {f"sample_quality/{n}" for n in scores} <= set(events.Tags()["scalars"])
    assert (out / "images" / "sample_quality" / "samples.png").stat().st_size > 100


@pytest.mark.slow  # a gmlab-eval process: ~15 s alone, over a minute on a busy machine
def test_a_missing_feature_network_is_one_error_line(runs, tmp_path, run_env):
    _, mfa = runs
    args = [f"ckpt_path={checkpoint(mfa)}", "sample_quality=mnist", f"hydra.run.dir={tmp_path}"]
    out = gmlab("gmlab-eval", args, run_env, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "experiment=features_mnist" in errors[0]
