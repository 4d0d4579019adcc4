"""Resolvers of the SLURM launcher config (conf/hydra/launcher/slurm.yaml): what a job asks
the scheduler for follows the trainer and the time limit, so that one file fits a GPU
partition and a CPU-only one. Registered on import (`gmlab.utils.cli` imports this module,
before Hydra composes a config)."""

from __future__ import annotations

from omegaconf import OmegaConf

from gmlab.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")
MAX_SIGNAL_DELAY_S = 120
SIGNAL_DELAY_FRACTION = 0.25


def slurm_gpus(accelerator: str, devices) -> int | None:
    """GPUs per node to request: None (no `--gpus-per-node`, so no gres request that a CPU
    partition refuses) unless `accelerator` is a GPU; then `devices` as a count (an int, a
    digit string or a list of device indices)."""
    if str(accelerator) not in GPU_ACCELERATORS:
        return None
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    raise ConfigError(
        f"hydra/launcher=slurm requests trainer.devices GPUs per node; got {devices!r}: "
        "give a number (trainer.devices=2) or hydra.launcher.gpus_per_node=<n>"
    )


def slurm_signal_delay(timeout_min: float) -> int:
    """Seconds before the time limit at which SLURM signals the job (submitit then saves and
    requeues): a quarter of the limit, at most 120 s, so that a short limit still leaves
    most of each attempt for training. SLURM may send it up to 60 s earlier than asked."""
    return int(min(MAX_SIGNAL_DELAY_S, SIGNAL_DELAY_FRACTION * float(timeout_min) * 60))


OmegaConf.register_new_resolver("gmlab.slurm_gpus", slurm_gpus, replace=True)
OmegaConf.register_new_resolver("gmlab.slurm_signal_delay", slurm_signal_delay, replace=True)
