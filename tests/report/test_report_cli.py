"""gmlab-report on real runs: a 2-job digits multirun and a gmlab-eval of one of its
checkpoints, reported by the console script."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from support.cli import gmlab

QUIET = [
    "~callbacks.progress_bar",
    "~callbacks.model_summary",
    "callbacks.image_grids.save_png=false",
]


@pytest.mark.slow
def test_report_of_a_digits_multirun_and_an_eval(tmp_path, run_env):
    sweep, ev, out = tmp_path / "sweep", tmp_path / "eval", tmp_path / "report"
    run_env["OMP_NUM_THREADS"] = "1"
    gmlab(
        "gmlab-train",
        ["-m", "seed=1,2", "trainer.max_epochs=2", *QUIET, f"hydra.sweep.dir={sweep}"],
        run_env,
    )
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    gmlab("gmlab-eval", [f"ckpt_path={ckpt}", f"hydra.run.dir={ev}"], run_env)

    printed = gmlab("gmlab-report", [str(tmp_path), "--out", str(out)], run_env).stdout
    with open(out / "report.csv", newline="") as handle:
        rows = {line["task"]: line for line in csv.DictReader(handle)}
    assert set(rows) == {"train", "eval"}
    bpd = [json.loads((sweep / j / "metrics.json").read_text())["test/bpd"] for j in "01"]
    train = rows["train"]
    assert (train["model"], train["data"], train["test/bpd n"]) == ("mfa", "digits", "2")
    assert float(train["test/bpd mean"]) == pytest.approx(statistics.mean(bpd), rel=1e-12)
    assert float(train["test/bpd std"]) == pytest.approx(statistics.stdev(bpd), rel=1e-9)
    assert train["status"] == "2 finished"
    evaluated = json.loads((ev / "metrics.json").read_text())["test/bpd"]
    assert rows["eval"]["model"] == "mfa" and rows["eval"]["test/bpd n"] == "1"
    assert float(rows["eval"]["test/bpd mean"]) == pytest.approx(evaluated, rel=1e-12)
    assert "[eval]" in printed and "2 finished" in printed
    assert (out / "curve_val_bpd.png").stat().st_size > 10_000
    assert "## Runs" in (out / "report.md").read_text()
