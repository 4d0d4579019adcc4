"""Sweeps on a real SLURM node (scripts/slurm_local.sh): the keep-going summary, a time-limit
requeue, a preemption, a cancelled job and DDP over srun tasks, each with
`hydra/launcher=slurm` as a user runs it. Every test is bounded by its timeouts and cancels
its jobs when it ends."""

from __future__ import annotations

import subprocess

import pytest
from slurm.jobs import attempts, finish, paced, sacct_states, slurm_job_ids, train, wait_until
from support.cli import POINTS
from support.sweeps import metrics, record

# one file, so that `make test` (pytest-xdist, --dist loadfile) runs them on one worker, one
# after another: the node has two cores
pytestmark = pytest.mark.slurm

QUIET = ["~callbacks.progress_bar", "~callbacks.model_summary"]
SAME = ("test/bpd", "test/nll", "val/bpd")
NOISE_BPD = 1e-3  # other dequantization draws: see the DDP test


def points(epochs: int, n: int = 512) -> list[str]:
    """support.cli.POINTS (a Gaussian on 2-D points, deterministic) for `epochs` epochs of
    (n / 2 - 64) / 32 steps."""
    run = [a for a in POINTS if not a.startswith("trainer.max_epochs=")]
    return [*run, f"trainer.max_epochs={epochs}", f"+data.n={n}"]


def on_slurm(sweep) -> list[str]:
    return ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"]


def test_a_sweep_keeps_going_past_a_failed_job(tmp_path, slurm_env):
    """Job 0 (CIFAR-10, not on disk) fails, job 1 (bundled digits) trains: the summary,
    the records, the exit status, and both array tasks COMPLETED in SLURM's accounting (the
    failure is the job's result, not a crash)."""
    sweep = tmp_path / "sweep"
    args = [*on_slurm(sweep), "model=gaussian", "trainer.max_epochs=1", "data=cifar10,digits"]
    args += [f"paths.data_dir={tmp_path / 'no_data'}", *QUIET]
    out = finish(train(args, slurm_env, timeout=150))
    assert out.returncode == 1, out.stderr
    assert f"multirun {sweep}: 1 finished, 1 failed, 0 skipped, 0 unfinished" in out.stdout
    assert f"failed: {sweep / '0'}  DataNotFoundError: CIFAR-10 not found" in out.stdout

    failed, done = record(sweep / "0"), record(sweep / "1")
    assert failed["status"] == "failed" and failed["error"]["type"] == "DataNotFoundError"
    assert done["status"] == "finished" and "data=digits" in done["overrides"]
    assert done["sweep_dir"] == str(sweep) and done["job_num"] == 1
    assert set(done["metric_kinds"]) == set(metrics(sweep / "1"))

    (array,) = {job.split("_")[0] for job in slurm_job_ids(sweep)}
    states = sacct_states([array], slurm_env)
    assert states == {f"{array}_0": ["COMPLETED"], f"{array}_1": ["COMPLETED"]}
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "--gpus-per-node" not in script and "--cpus-per-task=1" in script


def test_a_run_past_its_time_limit_resumes_in_its_own_folder(tmp_path, slurm_env):
    """timeout_min=2 and a first attempt paced to ~100 s of training: SLURM signals the job
    30-60 s before its limit (signal_delay_s=30, plus SLURM's 30 s check period), it saves,
    submitit requeues it, and the requeued job resumes from its own last.ckpt in its own
    folder, to the metrics of an uninterrupted run (deterministic CPU)."""
    sweep, log, reference = tmp_path / "sweep", tmp_path / "steps.log", tmp_path / "reference"
    run = points(epochs=16)  # 6 steps an epoch, ~1 s a step in the paced first attempt
    args = [*on_slurm(sweep), "hydra.launcher.timeout_min=2", *paced(log, 1.0), *run]
    job = train(args, slurm_env, timeout=300)
    finish(train([*run, f"hydra.run.dir={reference}"], slurm_env, timeout=150))  # meanwhile
    out = finish(job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"multirun {sweep}: 1 finished, 0 failed, 0 skipped, 0 unfinished" in out.stdout

    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".") == ["0"]
    rec = record(sweep / "0")
    assert rec["status"] == "finished"
    assert rec["ckpt_path"] == str(sweep / "0" / "checkpoints" / "last.ckpt")
    assert rec["attempts"] and {a["status"] for a in rec["attempts"]} == {"interrupted"}
    runs = attempts(log)
    assert len(runs) == len(rec["attempts"]) + 1
    for before, after in zip(runs, runs[1:], strict=False):
        assert before["steps"][-1] <= after["start"] <= before["steps"][-1] + 1

    (job_id,) = slurm_job_ids(sweep)
    (states,) = sacct_states([job_id], slurm_env).values()
    assert states[-1] == "COMPLETED" and len(states) == len(runs)
    a, b = metrics(reference), metrics(sweep / "0")
    for key in SAME:
        assert a[key] == b[key], key  # bitwise-equal floats


def test_a_preempted_run_saves_on_the_signal_and_goes_on_from_there(tmp_path, slurm_env):
    """`scontrol requeue` mid-epoch 0, before any validation checkpoint: the run saves
    last.ckpt on SLURM's SIGTERM and records the attempt as interrupted; the requeued run
    starts at the step the first one reached (at most the current step lost) and finishes."""
    sweep, log = tmp_path / "sweep", tmp_path / "steps.log"
    run = points(epochs=2, n=2048)  # 30 steps an epoch
    job = train([*on_slurm(sweep), *paced(log, 0.3), *run], slurm_env, timeout=240)
    wait_until(lambda: log.is_file() and attempts(log)[0]["steps"][-1:] >= [8], 120, "8 steps")
    (job_id,) = slurm_job_ids(sweep)
    subprocess.run(["scontrol", "requeue", job_id], env=slurm_env, check=True, timeout=30)
    out = finish(job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"multirun {sweep}: 1 finished, 0 failed, 0 skipped, 0 unfinished" in out.stdout

    first, second = attempts(log)
    assert 8 <= first["steps"][-1] < 30  # interrupted mid-epoch 0
    assert first["steps"][-1] <= second["start"] <= first["steps"][-1] + 1
    assert second["steps"][-1] == 60
    rec = record(sweep / "0")
    assert rec["status"] == "finished"
    assert [a["status"] for a in rec["attempts"]] == ["interrupted"]
    assert rec["ckpt_path"] == str(sweep / "0" / "checkpoints" / "last.ckpt")
    (states,) = sacct_states([job_id], slurm_env).values()
    assert states == ["REQUEUED", "COMPLETED"]


def test_a_cancelled_run_saves_and_the_same_command_resumes_it(tmp_path, slurm_env):
    """`scancel` mid-epoch 0: SLURM sends the same SIGTERM as for a requeue, but the job's
    restart count stays, so it saves last.ckpt, records the run as interrupted and returns
    that to the launch, whose summary reports it (exit 1). Launching the same
    command again resumes it from the step the first job reached, in the same folder."""
    sweep, log = tmp_path / "sweep", tmp_path / "steps.log"
    args = [*on_slurm(sweep), *paced(log, 0.3), *points(epochs=2, n=2048)]  # 30 steps/epoch
    job = train(args, slurm_env, timeout=240)
    wait_until(lambda: log.is_file() and attempts(log)[0]["steps"][-1:] >= [8], 120, "8 steps")
    (job_id,) = slurm_job_ids(sweep)
    subprocess.run(["scancel", job_id], env=slurm_env, check=True, timeout=30)
    out = finish(job)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = f"multirun {sweep}: 0 finished, 0 failed, 0 skipped, 0 unfinished, 1 interrupted"
    assert summary in out.stdout
    assert f"interrupted: {sweep / '0'}  by SIGTERM" in out.stdout
    rec = record(sweep / "0")
    assert (rec["status"], rec["signal"]) == ("interrupted", "SIGTERM")
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert sacct_states([job_id], slurm_env) == {job_id: ["CANCELLED"]}

    again = finish(train(args, slurm_env, timeout=240))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"multirun {sweep}: 1 finished, 0 failed, 0 skipped, 0 unfinished" in again.stdout
    first, second = attempts(log)
    assert 8 <= first["steps"][-1] < 30
    assert first["steps"][-1] <= second["start"] <= first["steps"][-1] + 1
    assert second["steps"][-1] == 60
    rec = record(sweep / "0")
    assert rec["status"] == "finished" and [a["status"] for a in rec["attempts"]] == ["interrupted"]


def test_ddp_over_two_srun_tasks_gives_the_single_process_metrics(tmp_path, slurm_env):
    """trainer=ddp_cpu under srun: two tasks on the node joined by Lightning's SLURM
    environment (gloo), for MFA's EM and for a gradient-trained Gaussian, against the same
    sweep in one process.

    Why the numbers agree: each rank takes every 2nd sample of the same permutation
    (`IndexBatchLoader`), so with the per-rank batch size halved (128 against 256) the
    union of the ranks' b-th batches is the single process's b-th batch (digits: 1350
    training samples, even, so no padding). DDP averages the ranks' mean gradients, and
    with equal halves that is the single process's mean gradient: the Gaussian takes the
    same Adam steps. MFA's EM sums its statistics over the epoch on every rank and
    all-reduces them: batch size does not enter. What still differs, and bounds the
    tolerance: (1) float32 sums in another order (~1e-6 relative); (2) dequantization
    noise is drawn per rank (`EpochSeed` seeds with the rank), so the runs see other
    uniform draws for the same samples, which moves a mean of 150-297 per-sample bpd
    values by up to ~1e-3 (`NOISE_BPD`; measured on the node: 5.4e-4 for MFA's val/bpd,
    2.4e-4 for the Gaussian's test/bpd, against 0.08 when the batch size was not halved);
    (3) the test split (297, odd) is padded to 298 for two ranks: its sample 0 counts
    twice, moving test/bpd by (bpd_0 - mean) / 298."""
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    common = ["model=mfa,gaussian", "trainer.max_epochs=2", "seed=3", *QUIET]
    ddp = ["trainer=ddp_cpu", "trainer.strategy=ddp", "data.batch_size=128"]
    job = train([*on_slurm(sweep), *ddp, *common], slurm_env, timeout=280)
    finish(
        train(
            ["-m", f"hydra.sweep.dir={single}", "data.batch_size=256", *common],
            slurm_env,
            timeout=200,
        )
    )
    out = finish(job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"multirun {sweep}: 2 finished, 0 failed, 0 skipped, 0 unfinished" in out.stdout

    for job_num in ("0", "1"):
        a, b = metrics(single / job_num), metrics(sweep / job_num)
        for key in ("test/bpd", "val/bpd"):
            assert b[key] == pytest.approx(a[key], abs=NOISE_BPD), (job_num, key)
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_1_log.*"))
    assert logs.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # task 1 is rank 1 of 2, per job
