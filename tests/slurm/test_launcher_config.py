"""conf/hydra/launcher/slurm.yaml as composed by Hydra, through to the sbatch script submitit
writes from it (no scheduler needed): no GPU request on the CPU, one per device on GPUs,
small default cores and memory, and a signal delay that fits the time limit."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from submitit.slurm.slurm import _make_sbatch_string

from gmlab.api import CONFIG_DIR
from gmlab.errors import ConfigError
from gmlab.utils.launcher import slurm_gpus


def sbatch_lines(tmp_path, overrides: list[str]) -> set[str]:
    """The `#SBATCH` lines of the script submitit would submit for one job."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    p = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    script = _make_sbatch_string(
        command="true",
        folder=tmp_path,
        time=p["timeout_min"],
        nodes=p["nodes"],
        ntasks_per_node=p["tasks_per_node"],
        cpus_per_task=p["cpus_per_task"],
        gpus_per_node=p["gpus_per_node"],
        mem=None if p["mem_gb"] is None else f"{p['mem_gb']}GB",
        signal_delay_s=p["signal_delay_s"],
        partition=p["partition"],
        additional_parameters=p["additional_parameters"],
    )
    return {line for line in script.splitlines() if line.startswith("#SBATCH")}


def test_cpu_trainer_requests_no_gpu_and_small_defaults(tmp_path):
    lines = sbatch_lines(tmp_path, [])
    assert not any("gpu" in line or "gres" in line for line in lines)
    assert {"#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=1"} <= lines
    assert {"#SBATCH --mem=4GB", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120"} <= lines
    assert "#SBATCH --requeue" in lines


def test_ddp_cpu_runs_one_task_per_process_without_gpus(tmp_path):
    lines = sbatch_lines(tmp_path, ["trainer=ddp_cpu"])
    assert "#SBATCH --ntasks-per-node=2" in lines
    assert not any("gpu" in line for line in lines)


def test_gpu_trainers_request_their_devices(tmp_path):
    assert "#SBATCH --gpus-per-node=1" in sbatch_lines(tmp_path, ["trainer=gpu"])
    lines = sbatch_lines(tmp_path, ["trainer=ddp", "trainer.devices=4"])
    assert {"#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4"} <= lines


@pytest.mark.parametrize(
    ("timeout_min", "delay_s"), [(1, 15), (4, 60), (8, 120), (60, 120), (1440, 120)]
)
def test_signal_delay_is_a_quarter_of_the_time_limit_up_to_120_s(tmp_path, timeout_min, delay_s):
    overrides = ["hydra.launcher.cpus_per_task=4", f"hydra.launcher.timeout_min={timeout_min}"]
    lines = sbatch_lines(tmp_path, overrides)
    assert {f"#SBATCH --signal=USR2@{delay_s}", "#SBATCH --cpus-per-task=4"} <= lines


def test_gpu_count_from_devices():
    assert slurm_gpus("cpu", 8) is None
    assert slurm_gpus("gpu", "2") == 2
    assert slurm_gpus("cuda", [0, 3]) == 2
    with pytest.raises(ConfigError, match="trainer.devices"):
        slurm_gpus("gpu", "auto")
