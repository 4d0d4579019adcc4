"""The console scripts as a user runs them: config printing and errors (resume after SIGKILL
and gmlab-eval: tests/test_sweeps.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from support.cli import gmlab

from gmlab.errors import GmlabError
from gmlab.utils.cli import cpu_float_mode


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


def test_missing_checkpoint_is_one_line(tmp_path, run_env):
    """(gmlab-eval reproducing a run's test metrics: tests/test_sweeps.py.)"""
    missing = gmlab("gmlab-eval", [f"ckpt_path={tmp_path / 'nope.ckpt'}"], run_env, check=False)
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("flush", [True, False])
def test_cpu_float_mode_flushes_subnormals_in_the_threads_it_starts(flush):
    """In a fresh process (the mode is per thread): 2^-120 * 2^-10 = 2^-130 is subnormal in
    float32; with `flush_denormal: true` the product, computed by two torch threads, is 0."""
    code = (
        "import torch; from omegaconf import OmegaConf; "
        "from gmlab.utils.cli import cpu_float_mode; "
        f"ok = cpu_float_mode(OmegaConf.create({{'flush_denormal': {flush}}})); "
        "torch.set_num_threads(2); "
        "x = torch.full((1 << 16,), 2.0 ** -120) * torch.full((1 << 16,), 2.0 ** -10); "
        "print(ok, int((x == 0).sum()), x.numel())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    supported, zeros, total = out.stdout.split()
    if supported != "True":
        pytest.skip("this CPU cannot flush subnormals")
    assert int(zeros) == (int(total) if flush else 0)


def test_cpu_float_mode_rejects_a_non_boolean_setting(run_env):
    with pytest.raises(GmlabError, match="flush_denormal must be true or false, got 'no'"):
        cpu_float_mode(OmegaConf.create({"flush_denormal": "no"}))
    bad = gmlab("gmlab-train", ["model=gaussian", "flush_denormal=no"], run_env, check=False)
    assert bad.returncode == 1
    assert "error: flush_denormal must be true or false" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_fused_optimizer_with_clipping_under_mixed_precision_is_a_clear_error(run_env):
    args = ["model=vae", "data=digits", "trainer.precision=bf16-mixed"]
    args += ["trainer.gradient_clip_val=1.0", "trainer.max_steps=1"]
    bad = gmlab("gmlab-train", args, run_env, check=False)
    assert bad.returncode == 1
    assert "error: trainer.gradient_clip_val=1.0 under trainer.precision=bf16-mixed" in bad.stderr
    assert "set model.optimizer.fused=false" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_weights_are_a_clear_error(run_env, precision):
    args = ["model=vae", "data=digits", f"trainer.precision={precision}", "trainer.max_steps=1"]
    bad = gmlab("gmlab-train", args, run_env, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    message = f"error: trainer.precision={precision} stores the weights in half precision"
    assert message in bad.stderr
    assert f"use trainer.precision={precision.replace('true', 'mixed')}" in bad.stderr


def test_entry_points_flush_subnormals_by_default():
    from hydra import compose, initialize_config_dir

    from gmlab.api import train_config
    from gmlab.utils.runs import PROJECT_ROOT

    assert train_config(["model=gaussian"]).flush_denormal is True
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        assert compose("eval", overrides=["ckpt_path=x.ckpt"]).flush_denormal is True
