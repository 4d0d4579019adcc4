"""Test-only Hydra launcher (Hydra loads launchers from the `hydra_plugins` namespace):
`hydra/launcher=slurm` with its own parameters, the jobs run by submitit's local executor.
submitit's AutoExecutor ignores the SLURM executor's parameters for another cluster."""

from __future__ import annotations

from unittest import mock

import submitit
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

REAL_EXECUTOR = submitit.AutoExecutor


def local_executor(cluster: str, **init):
    assert cluster == "slurm"
    return REAL_EXECUTOR(cluster="local", **init)


class SlurmOnLocalExecutor(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        with mock.patch.object(submitit, "AutoExecutor", local_executor):
            return super().launch(job_overrides, initial_job_idx)
