"""Multiruns that keep going, relaunch / resume, `ckpt_path=last` and the run records, as a
user runs them (real `gmlab-train` subprocesses on tiny data)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path

import hydra
import lightning
import pytest
import torch
import yaml
from support.cli import POINTS, gmlab
from support.sweeps import hparams_table, kill_once, metrics, record

from gmlab.utils.sweep import job_key

REPO = Path(__file__).resolve().parents[1]
SAME = ("test/bpd", "test/nll", "val/bpd")


def one_epoch_without_data(tmp_path: Path, sweep: Path) -> list[str]:
    """One epoch of the Gaussian, with no dataset on disk (`data=cifar10` fails), into `sweep`."""
    quiet = ["~callbacks.progress_bar", "~callbacks.model_summary"]
    return [
        "model=gaussian",
        "trainer.max_epochs=1",
        f"paths.data_dir={tmp_path / 'no_data'}",
        *quiet,
        f"hydra.sweep.dir={sweep}",
    ]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def git_head() -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    return out.stdout.decode().strip() if out.returncode == 0 else None


def test_job_key_is_the_sha1_of_the_sorted_overrides_without_hydra_and_ckpt_path():
    expected = hashlib.sha1(b"model=vae\nseed=2").hexdigest()
    assert job_key(["seed=2", "model=vae"]) == expected
    noisy = ["seed=2", "hydra.sweep.dir=/x", "model=vae", "ckpt_path=last", "hydra/launcher=slurm"]
    assert job_key(noisy) == expected
    assert job_key(["seed=3", "model=vae"]) != expected
    # an evaluation of another checkpoint is another job
    assert job_key(["ckpt_path=a.ckpt"], "eval") != job_key(["ckpt_path=b.ckpt"], "eval")


def test_launch_outcomes_count_only_this_launch(tmp_path):
    """Synthetic records: this launch's finished / failed / killed / skipped jobs, one of an
    earlier launch, one without times (a report-side skip) and a corrupt file."""
    from gmlab.utils.runs import write_json_atomic
    from gmlab.utils.sweep import launch_outcomes

    now, old = "2026-01-02T10:00:05+00:00", "2026-01-01T09:00:00+00:00"
    records = {
        "done": {"status": "finished", "start_time": now},
        "bad": {"status": "failed", "start_time": now},
        "killed": {"status": "running", "start_time": now},
        "earlier": {"status": "failed", "start_time": old},
        "skip": {
            "status": "finished",
            "start_time": old,
            "attempts": [{"status": "skipped", "start_time": now}],
        },
        "never": {"status": "skipped"},
    }
    for name, rec in records.items():
        (tmp_path / name).mkdir()
        write_json_atomic(tmp_path / name / "run.json", rec)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text("{not json")
    since = datetime.fromisoformat("2026-01-02T10:00:00+00:00").timestamp()
    got = {k: [p.name for p, _ in v] for k, v in launch_outcomes(tmp_path, since).items()}
    assert got == {
        "finished": ["done"],
        "failed": ["bad"],
        "skipped": ["skip"],
        "unfinished": ["killed"],
        "interrupted": [],
    }


def test_launch_outcomes_follow_the_launch_id_and_the_held_notes(tmp_path):
    """Records naming a launch count for that launch only, whatever their start time; a
    job held by another process is a skip with its holder."""
    from gmlab.utils.runs import write_json_atomic
    from gmlab.utils.sweep import launch_outcomes

    late = "2026-01-02T10:00:05+00:00"
    records = {
        "mine": {"status": "interrupted", "signal": "SIGTERM", "start_time": late, "launch": "a"},
        "theirs": {"status": "finished", "start_time": late, "launch": "b"},
    }
    for name, rec in records.items():
        (tmp_path / name).mkdir()
        write_json_atomic(tmp_path / name / "run.json", rec)
    write_json_atomic(tmp_path / "theirs" / ".held.a.json", {"held_by": "node7:42"})
    since = datetime.fromisoformat("2026-01-02T10:00:00+00:00").timestamp()
    got = launch_outcomes(tmp_path, since, launch="a")
    assert [p.name for p, _ in got["interrupted"]] == ["mine"]
    assert [(p.name, r["held_by"]) for p, r in got["skipped"]] == [("theirs", "node7:42")]
    assert got["finished"] == [] and got["unfinished"] == []


@pytest.mark.slow
def test_failed_first_job_does_not_stop_the_sweep(tmp_path, run_env):
    """Jobs 0 and 2 (CIFAR-10, not on disk) fail, 1 and 3 (digits) run; the records, the
    summary, the exit status and TensorBoard's HParams table of the sweep folder show it."""
    sweep = tmp_path / "sweep"
    common = [
        "trainer.max_epochs=1",
        f"paths.data_dir={tmp_path / 'no_data'}",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
    ]
    out = gmlab(
        "gmlab-train",
        ["-m", "model=gaussian,mfa", "data=cifar10,digits", *common, f"hydra.sweep.dir={sweep}"],
        run_env,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert f"multirun {sweep}: 2 finished, 2 failed, 0 skipped, 0 unfinished" in out.stdout
    for job in ("0", "2"):
        assert f"failed: {sweep / job}  DataNotFoundError: CIFAR-10 not found" in out.stdout
    assert "Traceback" not in out.stderr  # a user error is one line, also in a multirun

    failed = record(sweep / "0")
    assert failed["status"] == "failed" and failed["task"] == "train"
    assert failed["error"]["type"] == "DataNotFoundError"
    assert "CIFAR-10 not found" in failed["error"]["message"]
    assert "Traceback" in failed["error"]["traceback"]
    assert not (sweep / "0" / "metrics.json").exists()

    done = record(sweep / "1")
    assert done["status"] == "finished" and done["schema"] == 1
    assert record(sweep / "3")["status"] == "finished"
    # provenance, each against an independent source
    overrides = yaml.safe_load((sweep / "1" / ".hydra" / "overrides.yaml").read_text())
    assert done["overrides"] == overrides and "data=digits" in overrides
    assert done["job_key"] == hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()
    assert done["sweep_dir"] == str(sweep) and done["job_num"] == 1
    assert done["git"]["commit"] == git_head()
    assert isinstance(done["git"]["dirty"], bool) or done["git"]["commit"] is None
    assert done["versions"]["torch"] == torch.__version__
    assert done["versions"]["lightning"] == lightning.__version__
    assert done["versions"]["hydra"] == hydra.__version__
    assert done["versions"]["python"] == platform.python_version()
    assert done["device"]["accelerator"] == "cpu"
    assert done["device"]["count"] == len(os.sched_getaffinity(0))
    assert done["device"]["name"]
    wall = seconds(done["end_time"]) - seconds(done["start_time"])
    assert abs(done["wall_time_s"] - wall) <= 1.5
    assert seconds(done["start_time"]) <= seconds(done["heartbeat"]) <= seconds(done["end_time"])
    assert done["ckpt_path"] is None and done["attempts"] == []
    exact = {"kind": "exact"}
    assert done["metric_kinds"]["test/bpd"] == exact and done["metric_kinds"]["val/nll"] == exact
    assert set(done["metric_kinds"]) == set(metrics(sweep / "1"))

    # TensorBoard's HParams table: both finished jobs, each with its own hyperparameters
    # (MFA's n_components is a column although job 1 is a Gaussian) and final metrics
    columns, names, sessions = hparams_table(sweep)
    assert {"model/_target_", "model/n_components", "seed"} <= set(columns)
    assert {"test/bpd", "train/loss", "train/ll"} <= set(names)  # Gaussian's and MFA's
    assert sorted(sessions) == ["1/tensorboard", "3/tensorboard"]
    for job, target in (("1", "gaussian.DiagonalGaussian"), ("3", "mfa.MFAModel")):
        session = sessions[f"{job}/tensorboard"]
        assert session["hparams"]["model/_target_"] == f"gmlab.models.{target}"
        assert session["metrics"]["test/bpd"] == pytest.approx(metrics(sweep / job)["test/bpd"])


def test_single_run_failure_is_one_line_and_recorded(tmp_path, run_env):
    run = tmp_path / "run"
    args = ["data=cifar10", f"paths.data_dir={tmp_path}", f"hydra.run.dir={run}"]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1
    assert "error: CIFAR-10 not found" in out.stderr and "Traceback" not in out.stderr
    rec = record(run)
    assert rec["status"] == "failed" and rec["sweep_dir"] is None and rec["job_num"] is None
    assert rec["error"]["type"] == "DataNotFoundError"


@pytest.mark.slow
def test_ckpt_path_last_starts_fresh_then_resumes_a_sigkilled_run(tmp_path, run_env):
    """The same command starts a run and resumes it after SIGKILL, to bitwise-equal metrics;
    gmlab-eval of its best checkpoint reproduces the run's own test metrics."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    gmlab("gmlab-train", [*POINTS, f"hydra.run.dir={full}", "ckpt_path=last"], run_env)
    assert record(full)["ckpt_path"] is None and record(full)["status"] == "finished"

    command = [*POINTS, f"hydra.run.dir={killed}", "ckpt_path=last"]
    command += kill_once(tmp_path / "killed_once")
    crash = gmlab("gmlab-train", command, run_env, check=False)
    assert crash.returncode == -9  # SIGKILL mid-epoch 2
    stopped = record(killed)
    assert stopped["status"] == "running" and stopped["end_time"] is None
    assert stopped["heartbeat"] is not None  # stamped at the checkpoints of epochs 0 and 1
    last = killed / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (killed / "metrics.json").exists()

    gmlab("gmlab-train", command, run_env)  # the identical command
    resumed = record(killed)
    assert resumed["status"] == "finished" and resumed["ckpt_path"] == str(last)
    assert [a["status"] for a in resumed["attempts"]] == ["running"]
    a, b = metrics(full), metrics(killed)
    for key in SAME:
        assert a[key] == b[key], key  # bitwise-equal floats

    best = next((killed / "checkpoints").glob("best-*.ckpt"))
    ev = tmp_path / "eval"
    # the checkpoint's data module is the test suite's own (support.*), outside gmlab: the
    # documented opt-in lets gmlab-eval build it (docs/security.md)
    args = [f"ckpt_path={best}", "seed=7", "trusted_targets=[support.]", f"hydra.run.dir={ev}"]
    out = gmlab("gmlab-eval", args, run_env)
    assert "test/bpd" in out.stdout
    assert metrics(ev)["test/bpd"] == pytest.approx(b["test/bpd"], abs=1e-6)
    evaluated = record(ev)
    assert evaluated["task"] == "eval" and evaluated["status"] == "finished"
    assert evaluated["ckpt_path"] == str(best)
    assert evaluated["metric_kinds"]["test/bpd"] == {"kind": "exact"}


@pytest.mark.slow
def test_relaunch_resumes_unfinished_jobs_and_skips_finished_ones(tmp_path, run_env):
    """Jobs a and b train identically (`+label` changes nothing): a is killed in the first
    launch and resumed in the second, where b runs through; their metrics are equal. A third
    launch in another order skips both (matched by overrides, not job numbers) and runs the
    new job c in a folder of its own."""
    sweep = tmp_path / "sweep"
    base = [*POINTS, f"hydra.sweep.dir={sweep}", *kill_once(tmp_path / "killed_once")]
    first = gmlab("gmlab-train", ["-m", "+label=a,b", *base], run_env, check=False)
    assert first.returncode == -9
    assert record(sweep / "0")["status"] == "running" and not (sweep / "1").exists()

    second = gmlab("gmlab-train", ["-m", "+label=a,b", *base], run_env)
    assert "2 finished, 0 failed, 0 skipped, 0 unfinished" in second.stdout
    a, b = record(sweep / "0"), record(sweep / "1")
    assert a["ckpt_path"] == str(sweep / "0" / "checkpoints" / "last.ckpt")
    assert [x["status"] for x in a["attempts"]] == ["running"]
    assert b["ckpt_path"] is None and b["attempts"] == []
    for key in SAME:
        assert metrics(sweep / "0")[key] == metrics(sweep / "1")[key], key
    before = {d: (sweep / d / "metrics.json").stat().st_mtime_ns for d in ("0", "1")}

    third = gmlab("gmlab-train", ["-m", "+label=c,b,a", *base], run_env)
    assert "1 finished, 0 failed, 2 skipped, 0 unfinished" in third.stdout
    for folder, label in (("0", "a"), ("1", "b")):
        rec = record(sweep / folder)
        assert f"+label={label}" in rec["overrides"]
        assert rec["status"] == "finished" and rec["attempts"][-1]["status"] == "skipped"
        assert (sweep / folder / "metrics.json").stat().st_mtime_ns == before[folder]
    folders = {p.name for p in sweep.iterdir() if p.is_dir()}
    (new,) = folders - {"0", "1"}  # job 0 of this launch; folder 0 holds another job
    rec = record(sweep / new)
    assert new == f"0-{rec['job_key'][:8]}" and "+label=c" in rec["overrides"]
    assert rec["status"] == "finished"


@pytest.mark.slow
def test_local_gpus_launcher_keeps_going_on_the_cpu(tmp_path, run_env):
    """`hydra/launcher=local_gpus` (submitit, one process per job): the summary is built
    from the run records the job processes wrote. (A relaunch's skipping is the job's own
    logic, the same under every launcher: tested with the basic launcher below.)"""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local_gpus", "hydra.launcher.gpus_per_node=0"]
    args += ["data=cifar10,digits", *one_epoch_without_data(tmp_path, sweep)]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1, out.stderr
    assert "1 finished, 1 failed, 0 skipped, 0 unfinished" in out.stdout
    assert record(sweep / "0")["error"]["type"] == "DataNotFoundError"
    assert record(sweep / "1")["status"] == "finished"


@pytest.mark.slow
def test_slurm_launcher_config_keeps_going_through_submitits_local_executor(tmp_path, run_env):
    """`hydra/launcher=slurm` with conf/hydra/launcher/slurm.yaml's parameters; only the
    executor is submitit's local one (no SLURM here): each job in its own folder, the
    failure recorded, the summary and the exit status as with the other launchers."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=slurm", "trainer.devices=1", "hydra.launcher.cpus_per_task=1"]
    args += ["hydra.launcher._target_=hydra_plugins.gmlab_test_slurm.SlurmOnLocalExecutor"]
    args += ["data=cifar10,digits", *one_epoch_without_data(tmp_path, sweep)]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1, out.stderr
    assert "1 finished, 1 failed, 0 skipped, 0 unfinished" in out.stdout
    assert record(sweep / "0")["error"]["type"] == "DataNotFoundError"
    assert (
        record(sweep / "1")["status"] == "finished"
        and "data=digits" in record(sweep / "1")["overrides"]
    )
    assert list((sweep / ".submitit").iterdir())  # submitit ran the jobs


@pytest.mark.slow
def test_optuna_marks_a_failed_trial_failed_and_goes_on(tmp_path, run_env):
    """The failed job returns None (a NaN would stop hydra-optuna-sweeper 1.3's study).

    Seed 0 of the random sampler draws digits, then cifar10: the failed trial comes last,
    the case in which a study could end early.
    """
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=2",
        "data=choice(cifar10,digits)",
        "optimized_metric=val/bpd",
        *one_epoch_without_data(tmp_path, sweep),
    ]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1, out.stderr
    assert "1 finished, 1 failed, 0 skipped, 0 unfinished" in out.stdout
    assert record(sweep / "1")["error"]["type"] == "DataNotFoundError"  # the last trial
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    (done,) = [p for p in sweep.iterdir() if (p / "metrics.json").is_file()]
    assert best["best_params"] == {"data": "digits"}
    assert best["best_value"] == pytest.approx(metrics(done)["val/bpd"])


@pytest.mark.slow
def test_an_out_of_memory_job_is_recorded_with_its_traceback_and_the_next_runs(tmp_path, run_env):
    sweep = tmp_path / "sweep"
    targets = "support.sweeps.OutOfMemoryAtStart,lightning.pytorch.Callback"
    args = ["-m", f"+callbacks.extra._target_={targets}", *POINTS, f"hydra.sweep.dir={sweep}"]
    out = gmlab("gmlab-train", args, run_env, check=False)
    assert out.returncode == 1
    assert "1 finished, 1 failed, 0 skipped, 0 unfinished" in out.stdout
    error = record(sweep / "0")["error"]
    assert error["type"] == "OutOfMemoryError" and "Tried to allocate" in error["message"]
    assert "on_train_batch_start" in error["traceback"]
    assert "Traceback" in (sweep / "0" / "train.log").read_text()  # not a user error
    assert record(sweep / "1")["status"] == "finished"
    again = gmlab("gmlab-train", args, run_env, check=False)  # retries the failed job only
    assert again.returncode == 1
    assert "0 finished, 1 failed, 1 skipped, 0 unfinished" in again.stdout
    assert [a["status"] for a in record(sweep / "0")["attempts"]] == ["failed"]


@pytest.mark.slow
def test_a_killed_optuna_study_continues_to_n_trials_in_total(tmp_path, run_env):
    """The study lives in <sweep>/optuna.db. SIGKILL during trial 1 (after trial 0
    finished), then the same command: trial 0 is kept as it was, the killed trial's
    parameters run again in its own folder, and the study ends with n_trials = 3 complete
    trials in total."""
    import optuna

    sweep = tmp_path / "sweep"
    args = ["hparams_search=mfa_optuna", "hydra.sweeper.n_trials=3", "trainer.max_epochs=1"]
    args += ["~callbacks.progress_bar", "~callbacks.model_summary", "~callbacks.image_grids"]
    args += [
        f"hydra.sweep.dir={sweep}",
        "+callbacks.kill._target_=support.faults.KillAfterFinished",
    ]
    args += [f"+callbacks.kill.sweep_dir={sweep}", "+callbacks.kill.finished=1"]
    args += [f"+callbacks.kill.marker={tmp_path / 'killed'}"]
    first = gmlab("gmlab-train", args, run_env, check=False)
    assert first.returncode == -9
    storage = f"sqlite:///{sweep}/optuna.db"
    before = optuna.load_study(study_name="mfa_size", storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    killed_params = before[1].params

    second = gmlab("gmlab-train", args, run_env)
    assert "2 finished, 0 failed, 0 skipped, 0 unfinished, 0 interrupted" in second.stdout
    trials = optuna.load_study(study_name="mfa_size", storage=storage).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len(trials) == 4
    assert (complete[0].number, complete[0].params, complete[0].value) == (
        0,
        before[0].params,
        before[0].value,
    )
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["gmlab_interrupted"]
    assert complete[1].params == killed_params  # run again, then the new draw
    assert complete[2].params not in (before[0].params, killed_params)
    rerun = [p.parent for p in sweep.glob("*/run.json") if record(p.parent)["attempts"]]
    assert len(rerun) == 1 and [a["status"] for a in record(rerun[0])["attempts"]] == ["running"]
    assert metrics(rerun[0])["val/bpd"] == pytest.approx(complete[1].value)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t.value for t in complete))
