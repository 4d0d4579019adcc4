"""`gmlab-eval ckpt_path=... [data=...]`: test any gmlab checkpoint in its own run directory.

Without `data=...` the data config recorded in the checkpoint is used (`data.root=<dir>`
points it at moved data). Metrics go to
`<run>/metrics.json` and TensorBoard; `ndb.enabled=true` adds the NDB metric for models
that can sample; `sample_quality=mnist` adds sample-quality scores with the real-data floor
(docs/sample_quality.md); `ood=<set>` (or `ood=[<set>,...]`) adds out-of-distribution detection
metrics (`gmlab.ood`, docs/ood.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from gmlab.callbacks import EpochSeed
from gmlab.errors import GmlabError
from gmlab.utils.checkpoint import model_from_checkpoint, read_checkpoint
from gmlab.utils.cli import cpu_float_mode, gmlab_main, quiet_lightning, user_errors
from gmlab.utils.instantiate import instantiate_loggers
from gmlab.utils.options import check_options
from gmlab.utils.provenance import trainer_device
from gmlab.utils.runs import PROJECT_ROOT, RunRecord, finish_run, plain_config, scalar_metrics
from gmlab.utils.sweep import run_recorded
from gmlab.utils.trust import check_stored_config, trusting

os.environ.setdefault("GMLAB_ROOT", str(PROJECT_ROOT))


# a data config's keys that say where files are read and written: the user's, never a file's
LOCAL_DATA_KEYS = ("root", "cache_dir", "download")


def data_config(cfg: DictConfig, checkpoint: dict) -> DictConfig:
    """The data config to test on.

    `data=<name>` on the command line: that config. Otherwise the one stored with the
    checkpoint, checked like any config read from a file (`gmlab.utils.trust`), with this
    machine's locations in place of the stored ones (`root`: `data.root` or
    `paths.data_dir`; no `cache_dir`; no download) and the keys given on the command line
    (`data.root=<dir>`, `+data.<key>=<value>`) replacing its own.
    """
    given = OmegaConf.to_container(cfg.data, resolve=True)
    if given.get("root", "") is None:
        given["root"] = cfg.paths.data_dir
    if "_target_" in given:
        return OmegaConf.create(given)
    stored = checkpoint.get("gmlab", {}).get("config", {}).get("data")
    if not isinstance(stored, dict) or not stored:
        raise GmlabError(f"{cfg.ckpt_path} records no data config: pass data=<name> explicitly.")
    check_stored_config(stored, cfg.ckpt_path, "gmlab.config.data")
    local = {"root": given["root"], "cache_dir": None, "download": False}
    stored = {**stored, **{key: local[key] for key in LOCAL_DATA_KEYS if key in stored}}
    return OmegaConf.merge(OmegaConf.create(stored), given)


def ndb_metrics(model, datamodule, cfg: DictConfig) -> dict[str, float]:
    """NDB / NDB-over-K / JS of model samples against the training split."""
    from gmlab.metrics.ndb import ndb_score

    x_train, _ = datamodule.tensors("train")
    samples = model.sample(cfg.ndb.num_samples).cpu()
    result = ndb_score(x_train.float(), samples, num_bins=cfg.ndb.num_bins)
    return {
        "test/ndb": float(result["ndb"]),
        "test/ndb_over_k": float(result["ndb_over_k"]),
        "test/ndb_js": float(result["js"]),
    }


def evaluate(cfg: DictConfig, record: RunRecord | None = None) -> dict[str, float]:
    """Test the checkpoint `ckpt_path`; returns the metrics. `record`: the run's `run.json`,
    given the checkpoint, device and metric kinds."""
    check_options(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    model = model_from_checkpoint(checkpoint, cfg.ckpt_path)
    data = data_config(cfg, checkpoint)
    datamodule = hydra.utils.instantiate(data)
    loggers = instantiate_loggers(cfg.get("logger"))
    # the same test-time seeding as gmlab-train, so both report identical test metrics
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=[EpochSeed(cfg.seed)]
    )
    if record is not None:
        record.update(
            ckpt_path=str(Path(cfg.ckpt_path).resolve()),
            device=trainer_device(trainer),
            metric_kinds=model.metric_kinds() if hasattr(model, "metric_kinds") else {},
        )
    if not (cfg.ood.sets and cfg.ood.skip_test):
        trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(trainer)
    if cfg.ndb.enabled and hasattr(model, "sample"):
        datamodule.setup()
        metrics.update(ndb_metrics(model, datamodule, cfg))
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if "ndb" in k}, step=0)
    if cfg.get("sample_quality"):
        from gmlab.metrics.sample_quality import evaluate_sample_quality

        metrics.update(evaluate_sample_quality(model, datamodule, cfg, trainer, record))
    if cfg.ood.sets:
        from gmlab.ood.run import evaluate_ood

        out_dir = Path(trainer.default_root_dir)
        # the OOD sets that read files take the root given here and the data's cache folder
        paths = {"root": cfg.data.get("root"), "cache_dir": data.get("cache_dir")}
        metrics.update(evaluate_ood(model, datamodule, cfg, out_dir, trainer.loggers, paths))
    finish_run(trainer, plain_config(cfg), metrics, Path(trainer.default_root_dir))
    return metrics


@gmlab_main("eval")
def main(cfg: DictConfig) -> None:
    with user_errors(), trusting(cfg.get("trusted_targets")):
        cpu_float_mode(cfg)
        metrics = run_recorded(cfg, "eval", evaluate)
    if metrics is None:  # a failed job of a multirun (recorded in its run.json)
        return
    for name, value in sorted(metrics.items()):
        print(f"{name:>24s}  {value:.6g}")


if __name__ == "__main__":
    main()
