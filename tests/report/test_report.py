"""gmlab-report on synthetic run folders written here in the real layouts (Hydra's .hydra/,
metrics.json, run.json, a TensorBoard event file, Lightning's CSV log)."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from gmlab.report import cli, curves
from gmlab.report.records import find_runs, read_run

IWAE = {"kind": "iwae_bound", "k": 1000, "bound": True}
EXACT = {"kind": "exact", "bound": False}


def write_run(
    path: Path,
    seed: int = 1,
    prior: str = "normal",
    lr: float = 1e-3,
    metrics: dict | None = None,
    record: dict | None = None,
    overrides: list[str] | None = None,
    choices: dict | None = None,
    config: dict | None = None,
) -> Path:
    """A run folder as gmlab-train leaves it; `metrics=None` writes no metrics.json."""
    hydra = path / ".hydra"
    hydra.mkdir(parents=True)
    if config is None:
        config = {
            "task_name": "train",
            "seed": seed,
            "tags": ["vae", f"s{seed}"],
            "ckpt_path": None,
            "model": {"_target_": "gmlab.models.vae.VAE", "prior": prior, "lr": lr},
            "data": {"_target_": "gmlab.data.MNISTDataModule", "root": f"/data/{seed}"},
            "callbacks": {"epoch_seed": {"_target_": "x.EpochSeed", "seed": seed}},
            "paths": {"output_dir": str(path)},
            "trainer": {"max_epochs": 2, "devices": seed},
        }
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides is None:
        overrides = [f"model={'vae' if prior == 'normal' else 'vae_mog'}", f"seed={seed}"]
        overrides += [f"model.lr={lr}"] if lr != 1e-3 else []
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if choices is None:
        choices = {"model": "vae" if prior == "normal" else "vae_mog", "data": "mnist"}
    runtime = {"choices": choices, "cwd": str(path.parent)}
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": runtime}}))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if record is not None:
        (path / "run.json").write_text(json.dumps({"schema": 1, **record}))
    return path


def finished(kinds: dict | None = None, wall: float = 60.0) -> dict:
    kinds = kinds if kinds is not None else {"test/bpd": IWAE}
    return {"task": "train", "status": "finished", "wall_time_s": wall, "metric_kinds": kinds}


def settings(tmp_path: Path, **changes) -> dict:
    cfg = cli.settings(cli.parse_args([str(tmp_path), "--out", str(tmp_path / "out")]))
    cfg.update(changes)
    return cfg


def row_of(rows, model: str, label: str = ""):
    matches = [r for r in rows if r.group.model == model and r.group.label == label]
    assert len(matches) == 1, [(r.group.model, r.group.label) for r in rows]
    return matches[0]


def test_mean_std_over_seeds_against_a_hand_computation(tmp_path):
    normal = [3.912, 3.871, 3.955]
    mog = [3.801, 3.844]
    walls = [61.0, 75.0, 68.0]
    for seed, (value, wall) in enumerate(zip(normal, walls, strict=True), 1):
        metrics = {"test/bpd": value, "test/nll": 100 * value, "val/bpd": value + 1}
        write_run(
            tmp_path / "sweep" / str(seed - 1), seed, metrics=metrics, record=finished(wall=wall)
        )
    for seed, value in enumerate(mog, 1):
        record = finished({"test/bpd": EXACT})
        write_run(
            tmp_path / "mog" / str(seed), seed, "mog", metrics={"test/bpd": value}, record=record
        )

    rows, runs, out, metrics = cli.report([str(tmp_path)], settings(tmp_path))
    assert metrics == ["test/bpd", "test/nll"]  # the default pattern: test metrics only
    a, b = row_of(rows, "vae"), row_of(rows, "vae_mog")
    cell = a.cells["test/bpd"]
    assert cell.n == 3
    assert cell.mean == pytest.approx(statistics.mean(normal), abs=1e-12)
    assert cell.std == pytest.approx(statistics.stdev(normal), abs=1e-12)
    assert a.wall_time_s == pytest.approx(statistics.mean(walls))
    assert b.cells["test/bpd"].std == pytest.approx(statistics.stdev(mog), abs=1e-12)
    assert b.cells["test/nll"].n == 0
    # the kind travels with the number: a bound never reads as exact, unknown kinds say so
    assert "IWAE bound k=1000" in cell.text() and "exact" not in cell.text()
    assert b.cells["test/bpd"].text().endswith("(2) exact")
    assert a.cells["test/nll"].text().endswith("kind ?")

    with open(out / "report.csv", newline="") as handle:
        table = {line["model"]: line for line in csv.DictReader(handle)}
    assert float(table["vae"]["test/bpd mean"]) == pytest.approx(np.mean(normal), abs=1e-12)
    assert float(table["vae"]["test/bpd std"]) == pytest.approx(np.std(normal, ddof=1))
    assert table["vae"]["test/bpd kind"] == "IWAE bound k=1000"
    assert table["vae_mog"]["test/nll n"] == "0" and table["vae_mog"]["status"] == "2 finished"
    md = (out / "report.md").read_text()
    assert f"{statistics.mean(normal):.5g} ± {statistics.stdev(normal):.2g} (3)" in md


def test_grouping_ignores_the_seed_and_what_derives_from_it(tmp_path):
    # seeds, callback seeds, data roots, output folders, tags and devices differ: one group
    for seed in (1, 2, 3):
        write_run(tmp_path / f"a{seed}", seed, metrics={"test/bpd": float(seed)}, record=finished())
    write_run(tmp_path / "b", 4, lr=0.01, metrics={"test/bpd": 9.0}, record=finished())
    rows, *_ = cli.report([str(tmp_path)], settings(tmp_path))
    assert sorted(len(r.group.runs) for r in rows) == [1, 3]
    assert row_of(rows, "vae").cells["test/bpd"].values == [1.0, 2.0, 3.0]
    assert row_of(rows, "vae", "model.lr=0.01").cells["test/bpd"].values == [9.0]

    # a key taken out of the ignore list splits the groups again
    cfg = settings(tmp_path)
    cfg["ignore"] = [k for k in cfg["ignore"] if k != "seed"]
    rows, *_ = cli.report([str(tmp_path)], cfg)
    assert len(rows) == 4
    # group-by keys: only model.prior matters, so the lr=0.01 run joins the others
    rows, *_ = cli.report([str(tmp_path)], settings(tmp_path, group_by=["model.prior"]))
    assert len(rows) == 1 and rows[0].cells["test/bpd"].n == 4


def test_sort_by_a_metric_and_descending(tmp_path):
    for i, value in enumerate([2.0, 3.0, 1.0]):
        write_run(tmp_path / str(i), lr=10.0 ** -(i + 1), metrics={"test/bpd": value})
    rows, *_ = cli.report([str(tmp_path)], settings(tmp_path, sort="test/bpd"))
    assert [r.cells["test/bpd"].mean for r in rows] == [1.0, 2.0, 3.0]
    rows, *_ = cli.report([str(tmp_path)], settings(tmp_path, sort="-test/bpd"))
    assert [r.cells["test/bpd"].mean for r in rows] == [3.0, 2.0, 1.0]


def test_failed_running_stale_interrupted_and_unreadable_runs_are_listed(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_run(root / "0", 1, metrics={"test/bpd": 4.0}, record=finished())
    error = {"type": "NonFiniteError", "message": "val/nll is NaN at batch 3", "traceback": "..."}
    write_run(root / "1", 2, record={"task": "train", "status": "failed", "error": error})
    write_run(root / "2", 3, record={"task": "train", "status": "running"})
    stale = write_run(root / "3", 4, record={"task": "train", "status": "running"})
    old = time.time() - 3 * 3600
    for here, _, files in os.walk(stale):
        for name in files:
            os.utime(os.path.join(here, name), (old, old))
    write_run(root / "4", 5, metrics=None, record=finished())
    (root / "4" / "metrics.json").write_text('{"test/bpd": 3.9')  # truncated
    write_run(root / "5", 6, metrics={"test/bpd": 1.0})
    (root / "5" / "run.json").write_text("not json")
    write_run(root / "6", 7, lr=0.1, record={"task": "train", "status": "failed"})  # alone
    stopped = {"task": "train", "status": "interrupted", "signal": "SIGTERM"}
    write_run(root / "7", 8, record=stopped)

    cli.main([str(root), "--out", str(tmp_path / "out"), "--curves", ""])
    printed = capsys.readouterr()
    rows, runs, out, _ = cli.report([str(root)], settings(tmp_path, curves=[]))
    statuses = {r.path.name: r.status for r in runs}
    assert statuses == {
        "0": "finished",
        "1": "failed",
        "2": "running",
        "3": "stale",
        "4": "unreadable",
        "5": "unreadable",
        "6": "failed",
        "7": "interrupted",
    }
    main_row = row_of(rows, "vae")
    assert main_row.cells["test/bpd"].values == [4.0]  # only the finished run counts
    counts = "1 finished, 1 running, 1 stale, 1 interrupted, 1 failed, 2 unreadable"
    assert main_row.status == counts
    assert row_of(rows, "vae", "model.lr=0.1").status == "1 failed"  # a row with no result
    assert counts in printed.out
    assert "NonFiniteError: val/nll is NaN at batch 3" in printed.err
    assert "interrupted by SIGTERM; the same command resumes it" in printed.err
    assert "JSONDecodeError" in printed.err and "run.json" in printed.err
    md = (out / "report.md").read_text()
    for name, status in statuses.items():
        assert f"| sweep/{name} | train | {status} |" in md
    assert "metrics.json: JSONDecodeError" in md


def test_a_run_without_readable_config_is_listed_not_grouped(tmp_path):
    write_run(tmp_path / "good", metrics={"test/bpd": 2.0})
    bad = write_run(tmp_path / "bad", metrics={"test/bpd": 3.0})
    (bad / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    rows, runs, out, _ = cli.report([str(tmp_path)], settings(tmp_path))
    assert len(rows) == 1 and rows[0].cells["test/bpd"].values == [2.0]
    lines = (out / "report.md").read_text().splitlines()
    assert any(ln.startswith("| – |") and "bad | train | unreadable |" in ln for ln in lines)


def test_eval_runs_are_reported_under_their_training_run(tmp_path):
    train = write_run(tmp_path / "train" / "0", 1, metrics={"test/bpd": 4.0}, record=finished())
    (train / "checkpoints").mkdir()
    (train / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_run(tmp_path / "train" / "1", 2, metrics={"test/bpd": 4.2}, record=finished())
    eval_config = {"task_name": "eval", "seed": 9, "ckpt_path": "train/0/checkpoints/last.ckpt"}
    for name, extra in (("e1", []), ("e2", ["ndb.enabled=true"])):
        write_run(
            tmp_path / "evals" / name,
            config=eval_config,  # relative to the eval's working directory, as typed
            overrides=["ckpt_path=train/0/checkpoints/last.ckpt", *extra],
            choices={"data": "mnist"},
            metrics={"test/bpd": 3.9},
            record={"task": "eval", "status": "finished", "metric_kinds": {"test/bpd": IWAE}},
        )
        hydra_yaml = tmp_path / "evals" / name / ".hydra" / "hydra.yaml"
        hydra_yaml.write_text(
            hydra_yaml.read_text().replace(str(tmp_path / "evals"), str(tmp_path))
        )
    # only the evals are given: the training run is read from the checkpoint's folder
    rows, *_ = cli.report([str(tmp_path / "evals")], settings(tmp_path))
    assert {(r.group.task, r.group.model, r.group.label) for r in rows} == {
        ("eval", "vae", ""),  # the model comes from the training run's config
        ("eval", "vae", "eval: ndb.enabled=true"),
    }
    rows, *_ = cli.report([str(tmp_path)], settings(tmp_path))
    train_row = [r for r in rows if r.group.task == "train"]
    assert len(train_row) == 1 and train_row[0].cells["test/bpd"].values == [4.0, 4.2]
    evals = sorted((r for r in rows if r.group.task == "eval"), key=lambda r: r.group.label)
    assert [r.group.label for r in evals] == ["", "eval: ndb.enabled=true"]
    assert [r.cells["test/bpd"].values for r in evals] == [[3.9], [3.9]]
    assert cli.table.markdown(rows, ["test/bpd"]).count("[eval]") == 2


def scalars_run(path: Path, seed: int, values: list[float], tensorboard: bool) -> None:
    write_run(path, seed, metrics={"test/bpd": values[-1]}, record=finished())
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(path / "tensorboard"))
        for step, value in enumerate(values):
            writer.add_scalar("val/bpd", value, step * 10)
        writer.close()
    else:
        (path / "csv").mkdir()
        with open(path / "csv" / "metrics.csv", "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["epoch", "step", "train/loss", "val/bpd"])
            for step, value in enumerate(values):
                out.writerow([step, step * 10, "", value])
                out.writerow([step, step * 10 + 5, 1.5, ""])


def test_learning_curves_from_event_files_and_csv_logs(tmp_path):
    tb_values = {1: [5.0, 4.0, 3.5], 2: [5.2, 4.4, 3.7], 3: [4.9, 4.1, 3.3]}
    for seed, values in tb_values.items():
        scalars_run(tmp_path / f"tb{seed}", seed, values, tensorboard=True)
    for seed in (1, 2):
        scalars_run(tmp_path / f"csv{seed}", seed, [6.0 - seed, 5.0, 4.5], tensorboard=False)
        for file in (tmp_path / f"csv{seed}" / ".hydra").iterdir():
            file.write_text(file.read_text().replace("prior: normal", "prior: mog"))

    run = read_run(tmp_path / "tb1", 1800)
    assert curves.run_scalars(run, ["val/bpd"]) == {"val/bpd": [(0, 5.0), (10, 4.0), (20, 3.5)]}
    csv_run = read_run(tmp_path / "csv2", 1800)
    assert curves.run_scalars(csv_run, ["val/bpd", "train/loss"]) == {
        "val/bpd": [(0, 4.0), (10, 5.0), (20, 4.5)],
        "train/loss": [(5, 1.5), (15, 1.5), (25, 1.5)],
    }
    runs = [read_run(tmp_path / f"tb{seed}", 1800) for seed in (1, 2, 3)]
    steps, mean, std = curves.band([curves.run_scalars(r, ["val/bpd"])["val/bpd"] for r in runs])
    stacked = np.array(list(tb_values.values()))
    np.testing.assert_allclose(steps, [0, 10, 20])
    np.testing.assert_allclose(mean, stacked.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, stacked.std(0, ddof=1), rtol=1e-5)

    rows, runs, out, _ = cli.report([str(tmp_path)], settings(tmp_path))
    assert len(rows) == 2
    for name in ("curve_val_bpd.png", "curve_train_loss.png"):
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # lines and a band, not a blank canvas
    assert "![curve_val_bpd](curve_val_bpd.png)" in (out / "report.md").read_text()


def test_no_runs_and_missing_paths_are_one_error_line(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for path, why in ((tmp_path / "empty", "no runs found below"), (tmp_path / "no", "no such")):
        with pytest.raises(SystemExit) as stop:
            cli.main([str(path)])
        assert stop.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: {why}"[: len("error: ")]) and why in err
        assert len(err.splitlines()) == 1


def test_job_folders_in_numeric_order_beside_relaunch_folders(tmp_path):
    for name in ("10", "2", "0-d31338c3", "0"):
        write_run(tmp_path / name, metrics={"test/bpd": 1.0})
    assert [p.name for p in find_runs([tmp_path])] == ["0", "2", "10", "0-d31338c3"]
