"""A Lightning Trainer for tests: CPU, no logger, checkpoints, progress bar or summary."""

import lightning as L


def quiet_trainer(**kwargs) -> L.Trainer:
    """`L.Trainer(**kwargs)` on the CPU with every side output off and no sanity validation."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
