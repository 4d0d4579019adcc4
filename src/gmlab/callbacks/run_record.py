"""A heartbeat in the run record, so that a killed run can be told from a live one."""

from __future__ import annotations

import lightning as L

from gmlab.utils.provenance import now_iso
from gmlab.utils.runs import RunRecord


class RunHeartbeat(L.Callback):
    """Stamp `run.json`'s "heartbeat" with the UTC time at every checkpoint save. A run
    killed by SIGKILL keeps status "running"; its heartbeat (and the mtime of its newest
    checkpoint or event file) then stops moving."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            self.record.update(heartbeat=now_iso())
