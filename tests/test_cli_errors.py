"""Bad command-line options as a user meets them, through the console scripts: one `error:`
paragraph that names the option and the values it accepts, exit status 1, no traceback.

Each console run spends most of its time importing torch and Lightning, so the fast cases
run together, two at a time, in one module fixture (`refused`); the checks behind them are
also tested in-process, and the runs that train are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import yaml
from omegaconf import OmegaConf
from support.cli import gmlab

from gmlab.api import train_config
from gmlab.errors import ConfigError
from gmlab.models.realnvp import RealNVP
from gmlab.utils.cli import check_command_line
from gmlab.utils.options import ABSURD_BPD, bad_options, check_output_dir, warn_divergence
from gmlab.utils.runs import PROJECT_ROOT

CONF = str(PROJECT_ROOT / "conf")
# two batches of training, one of validation and test on the bundled 8x8 digits
TINY = ["data=digits", "debug=limit", "trainer.max_epochs=1", "~callbacks.progress_bar"]
BAD_VALUES = ["data.batch_size=abc", "seed=abc", "trainer.max_epochs=abc"]
BAD_VALUES += ["model.n_components=abc", "model.n_factors=2.5", "data.eval_batch_size=0"]
# command lines the fast tests expect refused; "below_a_file" runs in a folder below a file
REFUSED = {
    "values": BAD_VALUES,
    "latent_dim": [*TINY, "model=vae", "model.latent_dim=0"],
    "k_above_n": [*TINY, "model.n_components=1351"],  # digits: 1797 - 150 - 297 = 1350 train
    "unknown_key": ["model.n_componentz=3"],
    "below_a_file": [],
    "realnvp_bf16": [*TINY, "model=realnvp", "trainer.precision=bf16-mixed"],
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """{case: (its hydra.run.dir, its gmlab-train process)} for the `REFUSED` command lines."""
    root = tmp_path_factory.mktemp("refused")
    env = {**os.environ, "GMLAB_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    (root / "a_file").write_text("")

    def run(case: str) -> tuple[Path, subprocess.CompletedProcess]:
        folder = root / "a_file" / "run" if case == "below_a_file" else root / case
        args = [*REFUSED[case], f"hydra.run.dir={folder}"]
        return folder, gmlab("gmlab-train", args, env, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(REFUSED, pool.map(run, REFUSED), strict=True))


def paragraph(out: subprocess.CompletedProcess) -> str:
    """The one error paragraph of a process that failed as a user error (exit 1, no
    traceback)."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1, out.stderr
    return out.stderr[out.stderr.index("error:") :]


def test_bad_values_are_one_paragraph_with_a_line_per_option(refused):
    folder, out = refused["values"]
    assert paragraph(out).splitlines() == [
        "error: seed must be an integer (or null: unseeded), got 'abc'",
        "data.batch_size must be a positive integer, got 'abc'",
        "data.eval_batch_size must be a positive integer or null, got 0",
        "model.n_components must be a positive integer, got 'abc'",
        "model.n_factors must be an integer >= 0 (0: a diagonal GMM), got 2.5",
        "trainer.max_epochs must be a positive integer, or -1 (no limit) with "
        "trainer.max_steps or trainer.max_time, got 'abc'",
    ]
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "ConfigError"


@pytest.mark.parametrize(
    "case, message",
    [
        ("latent_dim", "error: model.latent_dim must be a positive integer, got 0"),
        ("k_above_n", "error: model.n_components=1351 is more than the 1350 training points"),
        ("unknown_key", "error: model.n_componentz is not an option: did you mean "),
        ("realnvp_bf16", "error: model.max_grad_norm=100.0 under trainer.precision=bf16-mixed"),
    ],
)
def test_settings_without_meaning_are_one_paragraph(refused, case, message):
    assert paragraph(refused[case][1]).startswith(message)


def test_unknown_key_is_refused_before_hydra_makes_the_run_folder(refused):
    folder, out = refused["unknown_key"]
    assert paragraph(out).splitlines()[0].endswith("did you mean model.n_components?")
    assert not folder.exists()


def test_realnvp_under_bf16_mixed_names_both_ways_out(refused):
    """RealNVP clips by itself (model.max_grad_norm) and the Adam preset is fused: Lightning
    would stop inside its clipping with a RuntimeError; the check sees the model's setting."""
    text = paragraph(refused["realnvp_bf16"][1])
    assert "set model.optimizer.fused=false (or model.max_grad_norm=null: no clipping)" in text


def test_a_run_folder_below_a_file_is_one_line(refused):
    """A folder below a file cannot be made, not even by root."""
    folder, out = refused["below_a_file"]
    assert paragraph(out).strip() == (
        f"error: hydra.run.dir={folder} cannot be created: {folder.parent} is a file. "
        "Give a folder path."
    )


def test_a_read_only_run_folder_is_refused(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("this user (root) may write into a read-only folder")
    with pytest.raises(ConfigError, match="run is not writable: .* is read-only or not yours"):
        check_output_dir(folder / "run", "hydra.run.dir")


@pytest.mark.parametrize(
    "trainer, complaint",
    [
        ({"max_epochs": 0}, "trainer.max_epochs must be a positive integer"),
        ({"max_epochs": -1}, "trainer.max_epochs=-1 (no limit) needs trainer.max_steps"),
        ({"max_epochs": None}, "trainer.max_epochs=null (no limit) needs trainer.max_steps"),
        ({"max_epochs": -1, "max_steps": 5}, None),
        ({"max_epochs": -1, "max_time": "00:00:01:00"}, None),
        ({"max_epochs": -1, "fast_dev_run": True}, None),
        ({"max_epochs": 1, "max_steps": 0}, "trainer.max_steps must be a positive integer"),
    ],
)
def test_a_run_that_trains_must_stop(trainer, complaint):
    lines = bad_options(OmegaConf.create({"train": True, "trainer": trainer}))
    if complaint is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(complaint), lines
    assert bad_options(OmegaConf.create({"trainer": trainer})) == []  # gmlab-eval: no fit


def test_sizes_must_be_positive_integers():
    cfg = OmegaConf.create({"data": {"batch_size": 0, "limit": True}, "seed": None})
    assert bad_options(cfg) == [
        "data.batch_size must be a positive integer, got 0",
        "data.limit must be a positive integer or null (all), got True",
    ]


def test_a_sweep_override_of_the_swept_models_is_written_for_hydra(tmp_path):
    """Hydra checks a multirun's key overrides against the default model (mfa), which has
    no `eval` node; each swept model has it, so the override goes through as `++`."""
    argv = ["-m", "model=vae,vae_mog", "model.eval.iwae_k=2", f"hydra.sweep.dir={tmp_path}"]
    assert check_command_line("train", argv, CONF) == [*argv[:2], "++model.eval.iwae_k=2", argv[3]]
    single = ["model=vae", "model.eval.iwae_k=2", f"hydra.run.dir={tmp_path}"]
    assert check_command_line("train", single, CONF) == single


def test_a_sweep_override_that_one_job_lacks_names_the_job(tmp_path):
    argv = ["-m", "model=vae,gaussian", "model.eval.iwae_k=2", f"hydra.sweep.dir={tmp_path}"]
    with pytest.raises(ConfigError) as error:
        check_command_line("train", argv, CONF)
    options = [key for key in train_config(["model=gaussian"]).model if key[0] != "_"]
    assert str(error.value).splitlines()[0] == (
        "model.eval.iwae_k is not an option (in the sweep's job model=gaussian); "
        f"the options of model are {', '.join(options)}"
    )


def test_other_composition_errors_keep_hydra_s_words_in_one_paragraph(tmp_path):
    with pytest.raises(ConfigError, match=r"(?s)Could not find 'model/nope'.*\tgaussian") as e:
        check_command_line("train", ["model=nope"], CONF)
    assert "Config search path" not in str(e.value)
    with pytest.raises(ConfigError, match="Ambiguous value for argument 'seed=1,2'"):
        check_command_line("train", ["seed=1,2"], CONF)
    with pytest.raises(ConfigError, match=r"cannot read the override a=\[1,2: no viable"):
        check_command_line("train", ["seed=3", "a=[1,2"], CONF)


def test_realnvp_refuses_a_second_clipping_setting():
    """RealNVP's own `max_grad_norm` and the trainer's `gradient_clip_val` are one setting."""
    flow = {"_target_": "gmlab.nn.flows.build_realnvp", "num_blocks": 1, "filters": 4}
    model = RealNVP([1, 8, 8], flow=flow, max_grad_norm=10.0)
    model.trainer = L.Trainer(accelerator="cpu", logger=False, gradient_clip_val=1.0)
    with pytest.raises(ConfigError, match="both clip RealNVP's gradients"):
        model.setup("fit")


def test_only_absurd_bits_per_dim_are_divergence_warnings():
    metrics = {"test/bpd": 5.2e15, "val/bpd": 7.9, "test/nll": 2e4, "train/bpd": float("nan")}
    (warning,) = warn_divergence(metrics)
    assert warning.startswith("test/bpd = 5.2e+15 bits/dim: training diverged")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["data.batch_size=0", "trainer.max_epochs=0"],
            "error: data.batch_size must be a positive integer, got 0\n"
            "trainer.max_epochs must be a positive integer, or -1",
        ),
        (["trainer.max_epochs=-1"], "error: trainer.max_epochs=-1 (no limit) needs"),
    ],
    ids=["zero", "endless"],
)
def test_epochs_and_sizes_through_the_console_script(run_env, tmp_path, args, message):
    out = gmlab("gmlab-train", [*args, f"hydra.run.dir={tmp_path}"], run_env, check=False)
    assert paragraph(out).startswith(message)


@pytest.mark.slow
def test_a_sweep_accepts_an_override_of_the_swept_models(run_env, tmp_path):
    args = ["-m", "model=vae,vae_mog", "model.eval.iwae_k=2", *TINY]
    gmlab("gmlab-train", [*args, f"hydra.sweep.dir={tmp_path}"], run_env)
    configs = sorted(tmp_path.glob("*/.hydra/config.yaml"))
    assert len(configs) == 2
    for path in configs:
        assert yaml.safe_load(path.read_text())["model"]["eval"]["iwae_k"] == 2
        assert json.loads((path.parents[1] / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_realnvp_trains_under_bf16_mixed_with_an_unfused_optimizer(run_env, tmp_path):
    args = ["data=digits", "debug=limit", "trainer.max_epochs=1", "callbacks=none"]
    args += ["model=realnvp", "trainer.precision=bf16-mixed", "model.optimizer.fused=false"]
    args += ["model.flow.num_blocks=1", "model.flow.filters=8"]
    gmlab("gmlab-train", [*args, f"hydra.run.dir={tmp_path}"], run_env)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["test/bpd"] < 16


@pytest.mark.slow
def test_divergence_is_a_warning_in_the_run_record(run_env, tmp_path):
    args = ["model=gaussian", "model.optimizer.lr=1e6", *TINY, f"hydra.run.dir={tmp_path}"]
    out = gmlab("gmlab-train", args, run_env)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = json.loads((tmp_path / "run.json").read_text())
    assert metrics["test/bpd"] > ABSURD_BPD and record["status"] == "finished"
    assert record["warnings"] == warn_divergence(metrics) != []
    assert any(warning.startswith("test/bpd = ") for warning in record["warnings"])
    assert "training diverged" in out.stdout + out.stderr
