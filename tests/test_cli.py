"""The console scripts as a user runs them: resume after SIGKILL, config printing, errors."""

from __future__ import annotations

import json
import shutil

import pytest
from support.cli import POINTS, gmlab


def test_sigkilled_run_resumes_to_identical_metrics(tmp_path, run_env):
    full, killed = tmp_path / "full", tmp_path / "killed"
    gmlab("gmlab-train", [*POINTS, f"hydra.run.dir={full}"], run_env)
    crash = gmlab(
        "gmlab-train",
        [
            *POINTS,
            f"hydra.run.dir={killed}",
            "+callbacks.kill._target_=support.callbacks.SigkillAt",
            "+callbacks.kill.epoch=2",
            "+callbacks.kill.batch=2",
        ],
        run_env,
        check=False,
    )
    assert crash.returncode == -9  # SIGKILL mid-epoch 2
    last = killed / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (killed / "metrics.json").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(killed / "checkpoints", resumed / "checkpoints")
    gmlab(
        "gmlab-train",
        [*POINTS, f"hydra.run.dir={resumed}", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}"],
        run_env,
    )
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    for key in ("test/bpd", "test/nll", "val/bpd"):
        assert a[key] == b[key], key  # bitwise-equal floats


def test_print_config_and_unknown_option(run_env):
    out = gmlab("gmlab-train", ["model=gaussian", "--cfg", "job"], run_env)
    assert "_target_: gmlab.models.gaussian.DiagonalGaussian" in out.stdout
    bad = gmlab("gmlab-train", ["model=nope"], run_env, check=False)
    assert bad.returncode != 0
    assert "Could not find 'model/nope'" in bad.stderr and "gaussian" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.flow.norm=layer",
            "error: cannot build model.flow (gmlab.nn.flows.build_realnvp): ValueError: "
            "norm must be one of (None, 'batch', 'act'), got 'layer'",
        ),
        (
            "+model.lr_scheduler.decay_step=5",
            "error: cannot build model.lr_scheduler (gmlab.utils.lr_schedule.WarmupStableDecay): "
            "TypeError: WarmupStableDecay.__init__() got an unexpected keyword argument",
        ),
    ],
)
def test_bad_model_option_is_one_error_paragraph(run_env, tmp_path, override, message):
    args = ["model=realnvp", "data=digits", override, f"hydra.run.dir={tmp_path}"]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_required_value_is_one_line(run_env):
    out = gmlab("gmlab-eval", [], run_env, check=False)
    assert out.returncode == 1
    assert "missing required option(s): ckpt_path" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_reproduces_train_test_metrics(tmp_path, run_env):
    run = tmp_path / "run"
    gmlab("gmlab-train", [*POINTS, "trainer.max_epochs=2", f"hydra.run.dir={run}"], run_env)
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    ev = tmp_path / "eval"
    out = gmlab("gmlab-eval", [f"ckpt_path={best}", "seed=7", f"hydra.run.dir={ev}"], run_env)
    assert "test/bpd" in out.stdout
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((ev / "metrics.json").read_text())
    assert a["test/bpd"] == pytest.approx(b["test/bpd"], abs=1e-6)
    missing = gmlab("gmlab-eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}"], run_env, check=False)
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
