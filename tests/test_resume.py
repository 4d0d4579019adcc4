"""Resume semantics: what a resume may change, the metrics it keeps, the best checkpoint of a
moved folder, and a fresh start in a used folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from support.cli import POINTS, gmlab
from support.sweeps import metrics, record

from gmlab.callbacks.checkpointing import Checkpoint
from gmlab.utils.resume import RESUME_SAFE, config_differences


def test_config_differences_ignore_the_resume_safe_keys_only():
    saved = {
        "seed": 1,
        "model": {"lr": 0.1, "hidden": [8, 8]},
        "trainer": {"max_epochs": 4, "precision": "32-true"},
        "paths": {"output_dir": "/a"},
        "callbacks": {"progress_bar": {"_target_": "x"}},
    }
    current = {
        "seed": 1,
        "model": {"lr": 0.2, "hidden": [8, 8], "extra": True},
        "trainer": {"max_epochs": 9, "precision": "64-true"},
        "paths": {"output_dir": "/b"},
        "callbacks": {},
    }
    assert config_differences(saved, current) == ["model.extra", "model.lr", "trainer.precision"]
    assert config_differences(saved, saved) == []
    assert {"trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "ckpt_path"} <= set(
        RESUME_SAFE
    )


def test_a_moved_checkpoint_folder_finds_its_files_in_the_new_place(tmp_path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    callback = Checkpoint(dirpath=str(new), save_last=True)
    state = {
        "dirpath": str(old),
        "best_model_path": str(old / "best-003.ckpt"),
        "best_model_score": torch.tensor(1.5),
        "kth_best_model_path": str(old / "best-003.ckpt"),
        "kth_value": torch.tensor(1.5),
        "best_k_models": {str(old / "best-003.ckpt"): torch.tensor(1.5)},
        "last_model_path": str(old / "last.ckpt"),
        "monitor": "val/bpd",
    }
    callback.load_state_dict(state)
    assert callback.best_model_path == str(new / "best-003.ckpt")
    assert callback.last_model_path == str(new / "last.ckpt")
    assert list(callback.best_k_models) == [str(new / "best-003.ckpt")]
    assert float(callback.best_model_score) == 1.5  # kept (Lightning drops it on a move)


@pytest.mark.slow
def test_resume_keeps_fit_metrics_tests_on_the_best_checkpoint_and_guards_the_config(
    tmp_path, run_env
):
    run = tmp_path / "run"
    args = [*POINTS, "ckpt_path=last"]
    gmlab("gmlab-train", [*args, f"hydra.run.dir={run}"], run_env)
    first = metrics(run)
    assert {"val/bpd", "train/loss", "test/bpd"} <= set(first)

    # a finished run resumed (no training left) re-tests and keeps its fit metrics
    (run / "metrics.json").write_text(
        json.dumps({k: v for k, v in first.items() if "test/" not in k})
    )
    gmlab("gmlab-train", [*args, f"hydra.run.dir={run}"], run_env)
    assert metrics(run) == first
    assert record(run)["status"] == "finished"

    # a moved folder: its resume tests on the best checkpoint beside it, not the last weights
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    gmlab("gmlab-train", [*args, f"hydra.run.dir={moved}"], run_env)
    assert metrics(moved)["test/bpd"] == first["test/bpd"]
    assert (moved / "checkpoints" / "last.ckpt").is_file()

    # another config: one clear error naming the key
    out = gmlab(
        "gmlab-train",
        [*args, f"hydra.run.dir={moved}", "model.std_floor=0.1"],
        run_env,
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        "error: cannot resume from" in out.stderr and "model.std_floor: 0.001 -> 0.1" in out.stderr
    )
    assert record(moved)["status"] == "failed"

    # a fresh start in the used folder sets the earlier files aside
    attempts_before = len(record(moved)["attempts"])
    gmlab("gmlab-train", [*POINTS, f"hydra.run.dir={moved}", "seed=8"], run_env)
    rec = record(moved)
    assert rec["ckpt_path"] is None and len(rec["attempts"]) == attempts_before + 1
    aside = rec["attempts"][-1]["set_aside"]
    assert aside == f"attempts/{attempts_before}"
    assert (moved / aside / "checkpoints" / "last.ckpt").is_file()
    assert (moved / aside / "metrics.json").is_file()
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert names == ["best-003.ckpt", "last.ckpt"], names  # no -v1 twins
