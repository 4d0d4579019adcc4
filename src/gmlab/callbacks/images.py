"""Image grids in TensorBoard and as PNG files, driven by the model protocol."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger


class ImageGrids(L.Callback):
    """Every `every_n_epochs` validation epochs, call `pl_module.figures(x_raw)` on the first
    validation batch and log each named image (samples, reconstructions, interpolations,
    model-specific panels) to TensorBoard under `images/<name>` and, with `save_png`, to
    `<run dir>/images/<name>/epoch_<NNN>.png`.

    `figures` returns {name: [C, H, W] float image in [0, 1]}; see `gmlab.models.base`.
    """

    def __init__(self, every_n_epochs: int = 1, save_png: bool = True, max_batch: int = 64):
        self.every_n_epochs = every_n_epochs
        self.save_png = save_png
        self.max_batch = max_batch
        self._batch: torch.Tensor | None = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch[0][: self.max_batch]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last:
            return
        self.log_figures(trainer, pl_module, self._batch, step=trainer.current_epoch)

    def log_figures(
        self, trainer, pl_module, x_raw: torch.Tensor, step: int, prefix: str = "images"
    ):
        """Compute and write the model's figures (rank zero only)."""
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            figures = pl_module.figures(x_raw)
        run_dir = Path(trainer.default_root_dir)
        for name, image in figures.items():
            image = enlarge(image.detach().float().cpu().clamp(0, 1))
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"{prefix}/{name}", image, global_step=step)
            if self.save_png:
                path = run_dir / prefix / name / f"epoch_{step:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                torchvision.utils.save_image(image, path)


def enlarge(image: torch.Tensor, min_side: int = 256, max_factor: int = 8) -> torch.Tensor:
    """Nearest-neighbour upscaling of small grids [C, H, W] (8x8 digits) so that they are
    readable in TensorBoard; pixels stay sharp squares."""
    factor = max(1, min(max_factor, min_side // max(image.shape[-2:])))
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
