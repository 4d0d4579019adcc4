"""Every bad gmlab-report option is one `error:` line (exit 1, no traceback) through the
console script; flagged runs (finished without metrics, statuses of their own) stay visible;
hostile run folders are only parsed: nothing is built, resolved or run, nothing crashes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gmlab.report import cli
from gmlab.report.records import MAX_FILE_BYTES, read_run


def write_run(path: Path, metrics: dict | None, status: str | None = "finished", **config):
    """A run folder of a VAE with `config` merged into `model`; metrics=None: none."""
    (path / ".hydra").mkdir(parents=True)
    model = {"_target_": "gmlab.models.vae.VAE", "prior": "normal", **config}
    cfg = {"seed": 1, "model": model, "data": {"batch_size": 64}}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    overrides = [f"model.{k}={v}" for k, v in config.items()]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    runtime = {"hydra": {"runtime": {"choices": {"model": "vae", "data": "mnist"}}}}
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(runtime))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (path / "run.json").write_text(json.dumps({"task": "train", "status": status}))
    return path


def report(args: list[str], env=None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("gmlab-report")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)


def assert_one_error_line(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.stderr.strip() == errors[0], out.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "0", {"test/bpd": 3.9, "test/nll": 270.0, "val/bpd": 4.0})
    write_run(root / "1", {"test/bpd": 3.8, "test/nll": 263.0}, lr=0.01)
    return root


def test_bad_option_names_are_one_error_line_through_the_console_script(runs, tmp_path):
    out = ["--out", str(tmp_path / "out"), "--curves", ""]
    line = assert_one_error_line(
        report([str(runs), *out, "--group-by", "modle.prior"]),
        "--group-by 'modle.prior'",
        "Did you mean model.prior",
        "Accepted: data, model, seed.",
    )
    assert "model.lr" not in line.split("Accepted:")[1]  # the top-level keys are listed
    assert_one_error_line(
        report([str(runs), *out, "--metrics", "test/bdp"]),
        "--metrics 'test/bdp' matches no metric",
        "Did you mean test/bpd",
        "Accepted: test/bpd, test/nll, val/bpd.",
    )
    assert_one_error_line(
        report([str(runs), *out, "--metrics", "test/bpd", "--sort=-test/nll"]),
        "--sort 'test/nll' is not a column",
        "Accepted: data, model, overrides, status, test/bpd, wall_time.",
    )
    assert_one_error_line(
        report([str(runs), *out, "--sort", "bpd"]), "--sort 'bpd'", "Did you mean"
    )
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # the names it accepts work
    good = report([str(runs), *out, "--group-by", "model.prior", "--sort=-test/nll"])
    assert good.returncode == 0, good.stderr
    with open(tmp_path / "out" / "report.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["test/nll n"] == "2"


def test_an_unwritable_output_folder_is_one_error_line(runs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_one_error_line(
        report([str(runs), "--out", str(blocker / "report")]),
        "cannot write the report into",
        "--out",
    )
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert_one_error_line(report([str(runs), "--out", str(locked)]), "Permission denied")


def test_grouped_rows_show_only_the_overrides_all_their_runs_share(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "0", {"test/bpd": 3.9}, lr=0.01)  # the first run of its group
    write_run(root / "1", {"test/bpd": 3.8})
    write_run(root / "2", {"test/bpd": 3.7}, prior="mog", lr=0.01)
    cfg = cli.settings(cli.parse_args([str(root), "--out", str(tmp_path / "o"), "--curves", ""]))
    rows, *_ = cli.report([str(root)], {**cfg, "group_by": ["model.prior"]})
    by_label = {r.group.label: r.cells["test/bpd"].values for r in rows}
    # the normal-prior group has runs with and without model.lr=0.01: its label has neither
    assert by_label == {"": [3.9, 3.8], "model.prior=mog model.lr=0.01": [3.7]}


def test_finished_without_metrics_and_unknown_statuses_are_flagged(runs, tmp_path):
    write_run(runs / "2", None, lr=0.1)
    write_run(runs / "3", {"test/bpd": 1.0}, status="preempted", lr=0.2)
    write_run(runs / "4", None, status="exploded | twice\nreally", lr=0.3)
    out = report([str(runs), "--out", str(tmp_path / "out"), "--curves", ""])
    assert out.returncode == 0, out.stderr
    assert "1 no metrics" in out.stdout and "1 preempted" in out.stdout
    assert "running" not in out.stdout  # an unknown word is not taken for "running"
    assert f"no metrics: {runs / '2'}: run.json says finished, but" in out.stderr
    assert f"preempted: {runs / '3'}" in out.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| runs/2 | train | no metrics |" in md
    assert "| runs/4 | train | exploded \\| twice really |" in md
    statuses = {p: read_run(runs / p, 1800).status for p in "01234"}
    assert statuses == {
        "0": "finished",
        "1": "finished",
        "2": "no metrics",
        "3": "preempted",
        "4": "exploded | twice really",
    }


def hostile_run(path: Path, marker: Path) -> Path:
    """A run folder whose config would build objects, read the environment and write
    `marker` if anything instantiated or resolved it; its run.json is garbage and huge."""
    (path / ".hydra").mkdir(parents=True)
    config = {
        "seed": "${oc.env:HOME}",
        "secret": "${oc.env:GMLAB_TEST_SECRET}",
        "model": {
            "_target_": "numpy.savetxt",
            "fname": str(marker),
            "X": [[1.0]],
            "nested": {"_target_": "os.system", "command": f"touch {marker}"},
            "interp": "${model.fname}",
        },
        "data": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
    }
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text("- !!python/object/apply:os.system ['id']\n")
    (path / "run.json").write_text('{"status": "finished", "x": "' + "a" * MAX_FILE_BYTES)
    return path


def test_hostile_run_folders_are_parsed_never_run(runs, tmp_path):
    marker = tmp_path / "pwned"
    hostile_run(runs / "evil", marker)
    bomb = runs / "bomb" / ".hydra"
    bomb.mkdir(parents=True)
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)
    ]
    (bomb / "config.yaml").write_text("\n".join(lines) + "\n")  # 10^9 leaves when expanded
    deep = runs / "deep"
    deep.mkdir()
    (deep / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    (deep / "run.json").write_text('{"status": "finished", "task": ["eval"]}')
    odd = write_run(runs / "odd", {"test/bpd": 10**400}, status=None)
    (odd / ".hydra" / "hydra.yaml").write_text("hydra: [1, 2]\n")
    kinds = write_run(runs / "kinds", {"test/bpd": 2.0}, status=None)
    record = {"status": "finished", "task": ["eval"], "metric_kinds": {"test/bpd": {"kind": [1]}}}
    (kinds / "run.json").write_text(json.dumps(record))

    env = {**os.environ, "GMLAB_TEST_SECRET": "do-not-print-me"}
    out = report([str(runs), "--out", str(tmp_path / "out"), "--curves", ""], env)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert not marker.exists()
    printed = out.stdout + out.stderr + (tmp_path / "out" / "report.md").read_text()
    assert "do-not-print-me" not in printed and "${oc.env:GMLAB_TEST_SECRET}" not in printed
    assert "kind ?" in out.stdout  # a malformed kind reads as unknown

    read = {name: read_run(runs / name, 1800) for name in ("evil", "bomb", "deep", "odd", "kinds")}
    evil = read["evil"]
    assert evil.status == "unreadable"
    assert "more than the" in evil.problem and "ConstructorError" in evil.problem
    # targets and interpolations stay the strings they are: nothing built or resolved
    assert evil.config["model"]["nested"]["_target_"] == "os.system"
    assert evil.config["secret"] == "${oc.env:GMLAB_TEST_SECRET}"
    assert read["bomb"].status == "unreadable" and "aliases" in read["bomb"].problem
    assert read["deep"].status == "unreadable" and "RecursionError" in read["deep"].problem
    assert read["odd"].status == "unreadable" and "OverflowError" in read["odd"].problem
    assert "hydra is not a mapping" in read["odd"].problem
    assert (read["kinds"].status, read["kinds"].task) == ("finished", "train")
