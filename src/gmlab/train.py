"""`gmlab-train`: compose the Hydra config, build data/model/trainer, fit, then test.

gmlab-train                                   # MFA on the bundled 8x8 digits
gmlab-train experiment=mfa_mnist data.root=$GMLAB_DATA
gmlab-train -m model=vae,vae_mog data=mnist seed=1,2,3
gmlab-train ... ckpt_path=<run>/checkpoints/last.ckpt   # resume
gmlab-train hydra.run.dir=outputs/mine ckpt_path=last   # start, or resume after a kill
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from gmlab.callbacks.checkpointing import SaveOnSignal
from gmlab.callbacks.run_record import RunHeartbeat
from gmlab.utils.checkpoint import check_compatible, read_checkpoint
from gmlab.utils.cli import cpu_float_mode, gmlab_main, quiet_lightning, user_errors
from gmlab.utils.instantiate import instantiate_callbacks, instantiate_loggers
from gmlab.utils.options import check_options
from gmlab.utils.provenance import trainer_device
from gmlab.utils.resume import check_resume_config, earlier_fit_metrics, set_aside
from gmlab.utils.runs import (
    PROJECT_ROOT,
    RunRecord,
    finish_run,
    plain_config,
    scalar_metrics,
    write_json_atomic,
)
from gmlab.utils.sweep import run_recorded
from gmlab.utils.trust import trusting

os.environ.setdefault("GMLAB_ROOT", str(PROJECT_ROOT))


def job_gpu(cfg: DictConfig, job_num: int | None, num_gpus: int) -> list[int] | None:
    """The GPU of job `job_num` of a parallel multirun (`hydra/launcher=local_gpus`): job n
    runs on GPU n mod num_gpus. None (keep `trainer.devices`) outside that case."""
    trainer = cfg.trainer
    if job_num is None or num_gpus < 2 or trainer.get("accelerator") not in ("gpu", "cuda"):
        return None
    if trainer.get("devices") not in (1, "1"):
        return None
    return [job_num % num_gpus]


def _multirun_job_num() -> int | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.job.num if hydra_cfg.mode == RunMode.MULTIRUN else None


def build(cfg: DictConfig, record: RunRecord | None = None):
    """Instantiate (datamodule, model, trainer) from a composed config (with a heartbeat
    into `record`, when given)."""
    import torch

    quiet_lightning()
    gpu = job_gpu(cfg, _multirun_job_num(), torch.cuda.device_count())
    if gpu is not None:
        cfg.trainer.devices = gpu
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    model.run_config = plain_config(cfg)
    callbacks = [*instantiate_callbacks(cfg.get("callbacks"), cfg.trainer), SaveOnSignal()]
    if record is not None:
        callbacks.append(RunHeartbeat(record))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def checkpoint_dir(cfg: DictConfig) -> Path:
    """This run's checkpoint folder (`callbacks.model_checkpoint.dirpath`)."""
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    return Path(folder or Path(cfg.paths.output_dir) / "checkpoints")


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: `ckpt_path`, where `last` means this run's own
    `checkpoints/last.ckpt` if it exists (else a fresh start)."""
    path = cfg.get("ckpt_path")
    if path != "last":
        return str(Path(path).resolve()) if path else None
    last = checkpoint_dir(cfg) / "last.ckpt"
    return str(last.resolve()) if last.is_file() else None


def train(cfg: DictConfig, record: RunRecord | None = None) -> dict[str, float]:
    """Fit and/or test as the config says; returns the final scalar metrics. `record`: the
    run's `run.json`, given the checkpoint, device and metric kinds.

    A fresh start in a used folder first sets the earlier attempt's files aside; a resume
    must have the checkpoint's config up to `gmlab.utils.resume.RESUME_SAFE`. The fit's
    metrics are written to metrics.json before testing, and a resume keeps them where it
    trains no further (a run killed while testing, a finished run resumed)."""
    check_options(cfg)
    ckpt_path = resume_path(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if record is not None and ckpt_path is None:
        earlier = ["metrics.json", "tensorboard", "images"]
        set_aside(record, [checkpoint_dir(cfg), *(out_dir / name for name in earlier)])
    datamodule, model, trainer = build(cfg, record)
    if record is not None:
        kinds = model.metric_kinds() if hasattr(model, "metric_kinds") else {}
        record.update(ckpt_path=ckpt_path, device=trainer_device(trainer), metric_kinds=kinds)
    if ckpt_path:
        checkpoint = read_checkpoint(ckpt_path)  # one read for both checks
        check_compatible(model, checkpoint, ckpt_path)
        check_resume_config(ckpt_path, checkpoint, model.run_config)
    metrics = earlier_fit_metrics(out_dir) if ckpt_path else {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics.update(scalar_metrics(trainer))
    if cfg.get("test", True):
        if trainer.is_global_zero and metrics:
            write_json_atomic(out_dir / "metrics.json", metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        use_best = bool(best) and Path(best).is_file() and not trainer.fast_dev_run
        trainer.test(
            model, datamodule=datamodule, ckpt_path=best if use_best else None, weights_only=True
        )
        metrics.update(scalar_metrics(trainer))
    finish_run(trainer, model.run_config, metrics, Path(trainer.default_root_dir))
    return metrics


@gmlab_main("train")
def main(cfg: DictConfig) -> float | None:
    """The metric `optimized_metric` for sweepers; None for a failed job of a multirun."""
    with user_errors(), trusting(cfg.get("trusted_targets")):
        cpu_float_mode(cfg)
        metrics = run_recorded(cfg, "train", train)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if metrics is not None and name else None


if __name__ == "__main__":
    main()
