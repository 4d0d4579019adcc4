"""A heartbeat in the run record, so that a killed run can be told from a live one."""

from __future__ import annotations

import contextlib

import lightning as L

from gmlab.utils.provenance import now_iso
from gmlab.utils.runs import DiskFullError, RunRecord


class RunHeartbeat(L.Callback):
    """Stamp `run.json`'s "heartbeat" with the UTC time at every checkpoint save. A run
    killed by SIGKILL keeps status "running"; its heartbeat (and the mtime of its newest
    checkpoint or event file) then stops moving. On a full disk the stamp is skipped: the
    checkpoint's own write then fails and the run records that (`RunRecord.finish`)."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            with contextlib.suppress(DiskFullError):
                self.record.update(heartbeat=now_iso())
