"""scripts/leaderboard.py: the VQ pair's stage 2 runs on the stage-1 checkpoint of its seed,
and a seed whose stage 1 failed gets a `skipped` stage 2 that gmlab-report shows in the
stage-2 group."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from gmlab.report import cli

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "leaderboard.py"


def load_script():
    spec = importlib.util.spec_from_file_location("leaderboard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage1(folder: Path, seed: int, status: str) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    overrides = ["experiment=vqvae_mnist_board", f"seed={seed}"]
    record = {"schema": 1, "task": "train", "status": status, "overrides": overrides}
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    (folder / "checkpoints" / "best-001.ckpt").write_bytes(b"")
    (folder / "checkpoints" / "best-003.ckpt").write_bytes(b"")


@pytest.mark.slow  # composes the stage-2 config in a subprocess
def test_failed_stage_one_marks_stage_two_skipped(tmp_path, monkeypatch):
    board = load_script()
    stage1(tmp_path / "vqvae" / "0", 1, "finished")
    stage1(tmp_path / "vqvae" / "1", 2, "failed")
    calls = []
    monkeypatch.setattr(board, "train", lambda args: calls.append(args) or 0)

    assert board.run_vq_stage2(tmp_path, [1, 2], ["debug=limit"]) == 0
    best = tmp_path / "vqvae" / "0" / "checkpoints" / "best-003.ckpt"
    assert calls == [
        [
            "-m",
            "experiment=vqvae_pixelcnn_mnist_board",
            "seed=1",
            "debug=limit",
            f"model.vqvae_ckpt={best}",
            f"hydra.sweep.dir={tmp_path / 'vqvae_pixelcnn'}",
        ]
    ]
    skipped = tmp_path / "vqvae_pixelcnn" / "skipped-seed2"
    record = json.loads((skipped / "run.json").read_text())
    assert record["status"] == "skipped" and "seed=2" in record["error"]["message"]

    rows, runs, _, _ = cli.report(
        [str(tmp_path / "vqvae_pixelcnn")],
        cli.settings(
            cli.parse_args([str(tmp_path), "--out", str(tmp_path / "out"), "--curves", ""])
        ),
    )
    assert [(r.group.model, r.group.data, r.status) for r in rows] == [
        ("vqvae_pixelcnn", "mnist", "1 skipped")
    ]
    assert runs[0].config["trainer"]["limit_train_batches"] == 3  # the smoke overrides

    # stage 1 finished on a relaunch: the skip record goes, stage 2 runs
    stage1(tmp_path / "vqvae" / "2", 2, "finished")
    board.run_vq_stage2(tmp_path, [2], [])
    assert not skipped.exists() and calls[-1][2] == "seed=2"


def test_seed_lists_honour_the_preset_count_the_smoke_cap_and_max_seeds():
    board = load_script()
    assert board.seeds_of(3, smoke=False) == [1, 2, 3]
    assert board.seeds_of(3, smoke=True) == [1, 2]
    assert board.seeds_of(3, smoke=False, most=1) == [1]
    assert board.seeds_of(1, smoke=False, most=3) == [1]  # RealNVP's single seed stays one


def test_the_bpd_against_fd_picture_has_a_labelled_point_per_row_with_both(tmp_path, monkeypatch):
    """Rows of gmlab-report's CSV with a test bpd and an FD become labelled points; a row
    without an FD (a family that cannot sample) is left out; no such row: no picture."""
    import matplotlib.axes

    board = load_script()
    header = "model,overrides,test/bpd mean,sample_quality/fd mean\n"
    csv = tmp_path / "report.csv"
    csv.write_text(
        header
        + "mfa,[eval] experiment=mfa_mnist_board eval: sample_quality=mnist,3.79,120.5\n"
        + "vae,experiment=vae_mnist_board,1.54,8.25\n"
        + "vqvae,experiment=vqvae_mnist_board,1.69,\n"
    )
    labels = []
    real_annotate = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "annotate",
        lambda self, text, xy, **kw: (
            labels.append((text, xy)) or real_annotate(self, text, xy, **kw)
        ),
    )
    png = tmp_path / "bpd_fd.png"
    assert board.plot_bpd_against_fd(csv, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert labels == [("mfa", (3.79, 120.5)), ("vae", (1.54, 8.25))]
    csv.write_text(header + "vqvae,experiment=vqvae_mnist_board,1.69,\n")
    assert not board.plot_bpd_against_fd(csv, tmp_path / "none.png")


def test_family_scoped_overrides_go_to_that_family_only():
    board = load_script()
    overrides = ["data.cache_dir=/c", "realnvp:model.amp=none", "features:seed=2"]
    overrides += ["hydra.run.dir=/a:b", "nofamily:x=1", "vae_made:model.eval.iwae_k=2"]
    common, own = board.scoped(overrides)
    assert common == ["data.cache_dir=/c", "hydra.run.dir=/a:b", "nofamily:x=1"]
    assert own == {
        "realnvp": ["model.amp=none"],
        "features": ["seed=2"],
        "vae_made": ["model.eval.iwae_k=2"],
    }
