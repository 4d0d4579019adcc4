"""The training entry point through Hydra's compose API: configs, NaN guard, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from support.compose import POINTS
from support.compose import train_config as make_cfg

from gmlab.errors import CheckpointMismatchError, NonFiniteError
from gmlab.train import build, train
from gmlab.utils.checkpoint import load_model


def test_nan_batch_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, [*POINTS, "+data.nan_at=[2,1]"])
    with pytest.raises(NonFiniteError) as info:
        train(cfg)
    message = str(info.value)
    assert "input batch" in message and "train batch 1" in message and "epoch 2" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    model = load_model(last)  # written after epoch 1, still loadable
    assert torch.isfinite(model.mean).all()
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_checkpoint_write_crash_keeps_previous_file(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, [*POINTS, "trainer.max_epochs=1", "test=false"])
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(before[: len(before) // 3])  # a torn write into the staging file
        raise OSError("disk full")

    # the checkpoint callback writes through torch.save into a file beside the checkpoint
    monkeypatch.setattr("gmlab.callbacks.checkpointing.torch.save", crash_midway)
    cfg2 = make_cfg(tmp_path, [*POINTS, "trainer.max_epochs=2", "test=false", f"ckpt_path={last}"])
    with pytest.raises(OSError, match="disk full"):
        train(cfg2)
    assert last.read_bytes() == before
    assert not list(last.parent.glob("*.partial"))  # no staging file left behind
    load_model(last)


def test_resume_with_mismatching_model_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path / "a", [*POINTS, "trainer.max_epochs=1", "test=false"])
    train(cfg)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg2 = make_cfg(tmp_path / "b", ["model=gaussian", f"ckpt_path={last}"])  # 8x8 digits
    with pytest.raises(
        CheckpointMismatchError, match=r"mean: checkpoint \(2,\) vs config \(1, 8, 8\)"
    ):
        train(cfg2)


def test_run_writes_metrics_checkpoints_and_stored_config(tmp_path):
    cfg = make_cfg(tmp_path, [*POINTS, "trainer.max_epochs=2"])
    metrics = train(cfg)
    assert {"val/bpd", "test/bpd", "test/nll", "train/loss"} <= set(metrics)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["gmlab"]["class"] == "gmlab.models.gaussian.DiagonalGaussian"
    assert ckpt["gmlab"]["config"]["data"]["_target_"] == "support.callbacks.PointsDataModule"
    best = list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    assert (tmp_path / "metrics.json").is_file()


def test_gaussian_baseline_matches_closed_form_fit(tmp_path):
    """Trained by Adam, the factorized Gaussian reaches the closed-form MLE (sample mean/std)."""
    cfg = make_cfg(tmp_path, [*POINTS, "trainer.max_epochs=150", "model.optimizer.lr=0.05"])
    cfg.callbacks = {}
    cfg.logger = {}
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    x, _ = datamodule.tensors("train")
    torch.testing.assert_close(model.mean.detach(), x.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(model.std.detach(), x.std(0, correction=0), atol=0.03, rtol=0.02)


def test_parallel_multirun_jobs_spread_over_gpus(tmp_path):
    cfg = make_cfg(tmp_path, ["model=gaussian", "trainer=gpu"])
    from gmlab.train import job_gpu

    assert [job_gpu(cfg, n, 4) for n in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert job_gpu(cfg, None, 4) is None  # single run: trainer.devices as configured
    assert job_gpu(cfg, 3, 1) is None
    cpu = make_cfg(tmp_path, ["model=gaussian", "trainer=cpu"])
    assert job_gpu(cpu, 3, 4) is None


def test_continuous_points_report_nats_and_sample_unclamped(tmp_path):
    """On real-valued points (num_levels=null) test/bpd is -log2 p(x) / D of the fitted
    density (checked against torch.distributions) and samples keep the data's range."""
    cfg = make_cfg(tmp_path, [*POINTS, "trainer.max_epochs=40", "model.optimizer.lr=0.05"])
    cfg.callbacks = {}
    cfg.logger = {}
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    bpd = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/bpd"]
    x, _ = datamodule.tensors("test")
    normal = torch.distributions.Normal(model.mean.detach(), model.std.detach())
    expected = -normal.log_prob(x).sum(1).mean() / (2 * math.log(2))
    assert bpd == pytest.approx(expected.item(), abs=1e-4)
    samples = model.sample(4000)
    assert samples.min() < 0  # the data (mean 1, std 2 along x) goes below 0: no clamping
    torch.testing.assert_close(samples.mean(0), model.mean.detach(), atol=0.1, rtol=0)


def test_trainer_flags_switch_off_their_callbacks(tmp_path):
    """`trainer.enable_progress_bar=false` (and the summary / checkpointing flags) work from
    the command line although the callbacks group lists those callbacks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from support.compose import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*POINTS, "trainer.enable_model_summary=false"])
    cfg.paths.output_dir = cfg.paths.work_dir = str(tmp_path)
    assert not cfg.trainer.enable_progress_bar  # set by POINTS
    assert "progress_bar" in cfg.callbacks and "model_summary" in cfg.callbacks
    _, _, trainer = build(cfg)
    kinds = {type(c).__name__ for c in trainer.callbacks}
    assert "RichProgressBar" not in kinds and "RichModelSummary" not in kinds
    assert "Checkpoint" in kinds and "ImageGrids" in kinds
    with open_dict(cfg):
        cfg.trainer.enable_checkpointing = False
    _, _, trainer = build(cfg)
    assert "Checkpoint" not in {type(c).__name__ for c in trainer.callbacks}


def test_runs_log_no_product_tips(tmp_path, caplog):
    """Lightning advertises two products at every Trainer start ("💡 Tip: ..."); gmlab's
    runs keep them out of the logs, and Lightning's other messages in."""
    import logging

    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    build(make_cfg(tmp_path, POINTS))
    assert "GPU available" in caplog.text  # Lightning's start-up messages are captured
    assert "Tip" not in caplog.text


def test_runs_hide_only_torchs_leafspec_notice_about_lightning():
    """torch >= 2.10 warns about `LeafSpec` from inside Lightning's pytree code on every fit;
    runs drop that one notice and keep every other FutureWarning."""
    import warnings

    from gmlab.utils.cli import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        for message, category in [
            ("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning),
            ("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning),
            ("some other deprecation", FutureWarning),
        ]:
            warnings.warn(message, category, stacklevel=1)
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
        (FutureWarning, "some other deprecation"),
    ]


def test_max_time_option_bounds_the_run(tmp_path):
    """`trainer.max_time=DD:HH:MM:SS` is a plain override (in conf/trainer/default.yaml) and
    reaches Lightning's Timer as that duration."""
    import datetime

    from lightning.pytorch.callbacks import Timer

    _, _, trainer = build(make_cfg(tmp_path, [*POINTS, "trainer.max_time=00:01:02:03"]))
    timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
    assert len(timers) == 1
    assert timers[0]._duration == datetime.timedelta(hours=1, minutes=2, seconds=3).total_seconds()
