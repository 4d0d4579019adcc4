"""`logger=mlflow` and `logger=wandb` (the `loggers` extra) on a short training run of the
bundled digits: what gmlab wrote to metrics.json and as PNG files is read back from each
tracker's local store with the tracker's own reader (MLflow's client; W&B's offline run
file, decoded with W&B's protocol buffers). Skipped when the extra is not installed."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.compose import POINTS, train_config

from gmlab.errors import NonFiniteError
from gmlab.train import train
from gmlab.utils.cli import user_errors
from gmlab.utils.instantiate import instantiate_loggers

EXTRA = 'the `loggers` extra is not installed (pip install -e ".[loggers]")'
DIGITS = ["debug=limit", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def run_digits(tmp_path: Path, logger: str) -> dict[str, float]:
    metrics = train(train_config(tmp_path, [*DIGITS, f"logger={logger}"]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    return metrics


def gmlab_pngs(run_dir: Path) -> list[Path]:
    """The figures ImageGrids saved: validation (epoch 0) and test."""
    return sorted((run_dir / "images").glob("*/*.png"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def assert_same_images(saved: list[Path], logged: list[Path]) -> None:
    """Every saved figure was logged once: a one-to-one match of equal pictures (up to 1 in
    8 bits: the PNG writer and the loggers round x * 255 their own ways)."""
    assert len(logged) == len(saved) > 0
    left = [pixels(p) for p in logged]
    for path in saved:
        want = pixels(path)
        same = [
            i
            for i, got in enumerate(left)
            if got.shape == want.shape and abs(got - want).max() <= 1
        ]
        assert same, f"{path.relative_to(path.parents[2])} was not logged"
        left.pop(same[0])


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_package_is_one_error_line(tmp_path, monkeypatch, capsys, logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    cfg = train_config(tmp_path, [f"logger={logger}"])
    with pytest.raises(SystemExit) as info, user_errors():
        instantiate_loggers(cfg.logger)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: logger={logger} needs the" in err and "[loggers]" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- MLflow
def test_mlflow_file_store_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason=EXTRA)
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored (unset) after the test
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # MLflow >= 3 needs it: gmlab's logger sets it
    metrics = run_digits(tmp_path, "mlflow")

    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("gmlab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == str(tmp_path)
    for name in ("val/bpd", "test/bpd", "train/bpd"):
        assert run.data.metrics[name] == metrics[name]
    (val,) = client.get_metric_history(run.info.run_id, "val/bpd")  # one validation epoch
    assert val.value == metrics["val/bpd"]
    # the model's hyperparameters (Lightning) and the run config (gmlab)
    cfg = train_config(tmp_path, DIGITS)
    assert run.data.params["n_components"] == str(cfg.model.n_components)
    assert run.data.params["model/n_components"] == str(cfg.model.n_components)
    assert run.data.params["data/batch_size"] == str(cfg.data.batch_size)

    artifacts = Path(run.info.artifact_uri.removeprefix("file://").removeprefix("file:"))
    logged = [p for p in (artifacts / "images").glob("*.png")]
    assert_same_images(gmlab_pngs(tmp_path), logged)


# ---------------------------------------------------------------------------------- W&B
BLOCK, HEADER = 32768, 7  # W&B's offline run file: LevelDB log blocks and record headers


def wandb_records(path: Path) -> list:
    """The records of an offline run file (`run-<id>.wandb`): a 7-byte file header
    (":W&B", magic 0xBEE1, version 0), then the LevelDB log format: 32 KiB blocks of
    chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), each record one
    `wandb_internal_pb2.Record` split over one or more chunks."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:HEADER]) == (b":W&B", 0xBEE1, 0)
    records, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 or pos + HEADER + length > len(data):  # the end, or a chunk being written
            break
        parts += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return records


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def read_offline_run(folder: Path, wait_s: float = 60.0) -> dict:
    """{"history": [row], "config": {key: value}, "exit_code": int or None} of one run.

    `wandb.finish()` returns once W&B's service process has the exit record, which its
    writer may put in the file a moment later: the file is read again (for up to `wait_s`
    seconds) until its exit record is there."""
    (path,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        out = parse_offline_run(path)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def parse_offline_run(path: Path) -> dict:
    out = {"history": [], "config": {}, "exit_code": None}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B's own folders under tmp_path, its console capture off, and a server address where
    nothing listens: an attempt to reach the network would fail instead of leaving."""
    pytest.importorskip("wandb", reason=EXTRA)
    home = tmp_path / "wandb_home"
    for name in ("CONFIG", "CACHE", "DATA", "ARTIFACT"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(home / name.lower()))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after Lightning's "dryrun"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "run"


def test_wandb_offline_run_in_the_run_folder(wandb_offline):
    import wandb

    metrics = run_digits(wandb_offline, "wandb")
    assert wandb.run is None  # ended with the gmlab run: a next job starts its own

    (folder,) = offline_runs(wandb_offline)
    run = read_offline_run(folder)
    assert run["exit_code"] == 0
    last = {}
    for row in run["history"]:
        last.update(row)
    for name in ("val/bpd", "test/bpd", "train/bpd"):
        assert last[name] == metrics[name]
    assert [row["val/bpd"] for row in run["history"] if "val/bpd" in row] == [metrics["val/bpd"]]
    cfg = train_config(wandb_offline, DIGITS)
    assert run["config"]["n_components"] == cfg.model.n_components
    assert run["config"]["model/n_components"] == cfg.model.n_components

    logged = sorted((folder / "files" / "media" / "images").rglob("*.png"))
    assert_same_images(gmlab_pngs(wandb_offline), logged)


def test_wandb_run_of_a_failed_fit_ends_failed(wandb_offline):
    """A fit that stops on an error ends its W&B run with exit code 1, so that the next run
    in the same process (a multirun's next job) gets a run of its own."""
    import wandb

    points = [*POINTS, "trainer.max_epochs=2", "~callbacks.image_grids", "logger=wandb"]
    with pytest.raises(NonFiniteError):
        train(train_config(wandb_offline, [*points, "+data.nan_at=[1,1]"]))
    assert wandb.run is None
    train(train_config(wandb_offline, [*points, "trainer.max_epochs=1"]))
    exit_codes = [read_offline_run(f)["exit_code"] for f in offline_runs(wandb_offline)]
    assert sorted(exit_codes) == [0, 1]


def test_sample_quality_and_ood_figures_reach_mlflow(tmp_path, monkeypatch):
    """The grid `gmlab-eval sample_quality=...` scores and an OOD histogram go to MLflow as
    image artifacts equal to the PNGs gmlab saves, beside the scores."""
    pytest.importorskip("mlflow", reason=EXTRA)
    from mlflow.tracking import MlflowClient

    from gmlab.metrics.sample_quality import log_scores
    from gmlab.utils.trackers import LocalMLFlowLogger, log_image

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = LocalMLFlowLogger(tracking_uri=uri, experiment_name="gmlab")
    samples = torch.randint(0, 256, (70, 1, 8, 8), dtype=torch.uint8)
    log_scores([logger], {"sample_quality/fd": 12.5}, samples, tmp_path)
    histogram = torch.rand(3, 40, 60)
    log_image(logger, "test/ood/noise", histogram, 0)
    logger.finalize("success")

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gmlab").experiment_id])
    assert run.data.metrics["sample_quality/fd"] == 12.5
    artifacts = Path(run.info.artifact_uri.removeprefix("file://").removeprefix("file:"))
    logged = sorted((artifacts / "images").glob("*.png"))
    saved = tmp_path / "images" / "sample_quality" / "samples.png"
    Image.fromarray((histogram * 255).round().byte().permute(1, 2, 0).numpy()).save(
        tmp_path / "histogram.png"
    )
    assert_same_images([saved, tmp_path / "histogram.png"], logged)
