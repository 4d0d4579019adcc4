"""Test-only helpers for sweeps and resumes: a crash that happens once, and the run records."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L


class SigkillOnce(L.Callback):
    """SIGKILL the process at (epoch, batch) unless `marker` exists; the marker is created
    first, so the identical command started again runs through."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        at = (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        if at and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def kill_once(marker: Path, epoch: int = 2, batch: int = 2) -> list[str]:
    """Overrides that add `SigkillOnce` to a run."""
    return [
        "+callbacks.kill._target_=support.sweeps.SigkillOnce",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch={batch}",
        f"+callbacks.kill.marker={marker}",
    ]


def record(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def hparams_table(logdir: Path) -> tuple[list[str], list[str], dict[str, dict]]:
    """What TensorBoard's HParams tab shows for `logdir`, read by TensorBoard's own event
    multiplexer and hparams backend: (columns, metric names, {run: {"hparams", "metrics"}})."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    tb = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=mux)
    backend, request = backend_context.Context(tb), context.RequestContext()
    experiment = backend.experiment_from_metadata(
        request,
        "",
        True,
        backend.hparams_metadata(request, ""),
        backend.hparams_from_data_provider(request, "", None),
    )
    query = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000)
    query.allowed_statuses.extend(
        [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE]
    )
    for info in experiment.hparam_infos:
        query.col_params.add(hparam=info.name)
    for info in experiment.metric_infos:
        query.col_params.add(metric=info.name)
    groups = list_session_groups.Handler(request, backend, "", query).run().session_groups
    sessions = {
        group.name: {
            "hparams": {k: v.string_value or v.number_value for k, v in group.hparams.items()},
            "metrics": {m.name.tag: m.value for m in group.metric_values},
        }
        for group in groups
    }
    columns = [info.name for info in experiment.hparam_infos]
    return columns, [info.name.tag for info in experiment.metric_infos], sessions


class OutOfMemoryAtStart(L.Callback):
    """Raise CUDA's out-of-memory error at the first training batch (also on the CPU)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
