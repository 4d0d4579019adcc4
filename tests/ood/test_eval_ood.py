"""`gmlab-eval ... ood=[...]` end to end on a digits checkpoint, and its errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from PIL import Image
from support.cli import gmlab

from gmlab.data import DigitsDataModule
from gmlab.errors import ConfigError, NonFiniteError, ShapeError
from gmlab.ood.run import evaluate_ood
from gmlab.utils.checkpoint import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints_v0"
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.slow  # a gmlab-eval process: ~20 s on an idle 2-core machine
def test_eval_reports_ood_metrics_and_histograms(tmp_path, run_env):
    ckpt = tmp_path / "mfa.ckpt"
    shutil.copy(FIXTURES / "mfa.ckpt", ckpt)
    run = tmp_path / "eval"
    args = [
        f"ckpt_path={ckpt}",
        "ood=[noise,constant]",
        "ood.compressor=zlib",
        f"hydra.run.dir={run}",
    ]
    out = gmlab("gmlab-eval", args, run_env)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/bpd" in metrics  # the model's own test pass ran too
    for ood_set in ("noise", "constant"):
        for score in ("bpd", "complexity", "typicality", "complexity_typicality"):
            for key in ("auroc", "aupr", "fpr95"):
                value = metrics[f"test/ood/{ood_set}/{score}/{key}"]
                assert 0.0 <= value <= 1.0
        with Image.open(run / "images" / "ood" / f"{ood_set}.png") as image:
            assert image.width > 3 * image.height  # four panels side by side
    # an MFA fitted to digits (3 steps) gives uniform noise far less likelihood
    assert metrics["test/ood/noise/bpd/auroc"] > 0.99
    assert metrics["test/ood/noise/bpd/mean"] > metrics["test/ood/in/bpd/mean"] + 1.0
    # the test split's mean bpd is the test pass's (other dequantization noise)
    assert metrics["test/ood/in/bpd/mean"] == pytest.approx(metrics["test/bpd"], abs=0.05)
    assert "test/ood/noise/bpd/auroc" in out.stdout
    events = b"".join(p.read_bytes() for p in run.rglob("events.out.tfevents*"))
    assert b"test/ood/noise" in events and b"test/ood/constant/typicality/auroc" in events


def eval_config(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("eval", overrides=["ckpt_path=unused", *overrides])


def test_ood_errors_name_the_choices(tmp_path, run_env):
    model = load_model(FIXTURES / "mfa.ckpt")
    cfg = eval_config(["ood=[noise,digits28]"])
    with pytest.raises(ShapeError) as shape:
        evaluate_ood(model, DigitsDataModule(), cfg, tmp_path)
    message = str(shape.value)
    assert "'digits28' holds images of shape [1, 28, 28]" in message
    assert "model takes [1, 8, 8]" in message and "noise, constant" in message
    assert "mnist_inverted" in message  # all the sets
    with pytest.raises(ConfigError, match="bpd, complexity, typicality, complexity_typicality"):
        evaluate_ood(
            model, DigitsDataModule(), eval_config(["ood=noise", "ood.scores=[energy]"]), tmp_path
        )
    with pytest.raises(MissingConfigException, match="Could not find 'ood/nope'") as unknown:
        eval_config(["ood=nope"])
    assert "digits28" in str(unknown.value) and "mnist_rot90" in str(unknown.value)


def test_reference_checkpoint_adds_the_ratio_score(tmp_path):
    model = load_model(FIXTURES / "mfa.ckpt")
    base = ["ood=[noise,constant]", "ood.compressor=zlib", "ood.limit=50", "ood.scores=[ratio]"]
    with pytest.raises(ConfigError, match=r"ood.scores \['ratio'\] do not apply"):
        evaluate_ood(model, DigitsDataModule(), eval_config(base), tmp_path)
    reference = f"ood.reference_ckpt={FIXTURES / 'gaussian.ckpt'}"
    metrics = evaluate_ood(model, DigitsDataModule(), eval_config([*base, reference]), tmp_path)
    for ood_set in ("noise", "constant"):
        assert 0.0 <= metrics[f"test/ood/{ood_set}/ratio/auroc"] <= 1.0
    classifier = f"ood.reference_ckpt={FIXTURES / 'gmm.ckpt'}"
    with pytest.raises(ConfigError, match="ood.reference_ckpt=.*gmm.ckpt: the reference must"):
        evaluate_ood(model, DigitsDataModule(), eval_config([*base, classifier]), tmp_path)
    missing = f"ood.reference_ckpt={tmp_path / 'nope.ckpt'}"
    with pytest.raises(ConfigError, match="ood.reference_ckpt=.*nope.ckpt: checkpoint not found"):
        evaluate_ood(model, DigitsDataModule(), eval_config([*base, missing]), tmp_path)


def test_non_finite_scores_are_one_error_naming_the_set_and_score(tmp_path):
    model = load_model(FIXTURES / "mfa.ckpt")
    exact = model.log_likelihood

    def nan_on_flat_images(x_raw):  # a model with no finite density for constant images
        flat = x_raw.flatten(1).float().std(1) == 0
        return torch.where(flat, torch.nan, exact(x_raw))

    model.log_likelihood = nan_on_flat_images
    cfg = eval_config(["ood=[noise,constant]", "ood.compressor=zlib", "ood.limit=50"])
    with pytest.raises(NonFiniteError, match="of OOD set 'constant' are NaN or inf") as error:
        evaluate_ood(model, DigitsDataModule(), cfg, tmp_path)
    assert "50 of 50 'bpd' scores" in str(error.value)


@pytest.mark.slow  # a gmlab-eval process
def test_a_bad_set_is_one_error_line_on_the_command_line(tmp_path, run_env):
    args = [f"ckpt_path={FIXTURES / 'mfa.ckpt'}", "ood=digits28", "ood.skip_test=true"]
    out = gmlab("gmlab-eval", [*args, f"hydra.run.dir={tmp_path}"], run_env, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "'digits28' holds images" in error[0], out.stderr
