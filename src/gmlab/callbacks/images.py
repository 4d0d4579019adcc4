"""Image grids and histograms in TensorBoard (grids also in MLflow and W&B, and as PNG
files), driven by the model protocol: no model writes a picture itself."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger

from gmlab.utils.trackers import log_image


class ImageGrids(L.Callback):
    """The model's `figures(x_raw)` and `histograms(x_raw)` (see `gmlab.models.base`).

    Validation, every `every_n_epochs` epochs and at the last: `figures` of the first
    validation batch (at most `max_batch` samples) go to the loggers as `images/<name>`
    (`log_image`) and, with `save_png`, to `<run dir>/images/<name>/epoch_<NNN>.png`; the
    values `histograms` returns for every validation batch of that epoch are joined and
    logged as the TensorBoard histogram `val/<name>`. Testing (`on_test`): the same from
    the test set, as `test/<name>` and `<run dir>/images/test/<name>.png`. Only rank zero
    logs (its own batches).

    `figures` returns {name: [C, H, W] float image in [0, 1]}; `histograms` returns
    {name: tensor of values} per batch.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        save_png: bool = True,
        max_batch: int = 64,
        on_test: bool = True,
    ):
        self.every_n_epochs = every_n_epochs
        self.save_png = save_png
        self.max_batch = max_batch
        self.on_test = on_test
        self._batch: torch.Tensor | None = None
        self._values: dict[str, list[torch.Tensor]] = {}

    # ------------------------------------------------------------ validation
    def logs_epoch(self, trainer: L.Trainer) -> bool:
        """Whether this validation epoch logs (every `every_n_epochs`, and the last)."""
        if trainer.sanity_checking:
            return False
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        return last or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._batch, self._values = None, {}

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if dataloader_idx == 0 and self.logs_epoch(trainer):
            self.collect(trainer, pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not self.logs_epoch(trainer):
            return
        self.log_figures(trainer, pl_module, self._batch, step=trainer.current_epoch)
        self.log_histograms(trainer, "val", step=trainer.current_epoch)

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._batch, self._values = None, {}

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self.on_test and dataloader_idx == 0:
            self.collect(trainer, pl_module, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.on_test or self._batch is None:
            return
        self.log_figures(trainer, pl_module, self._batch, step=trainer.global_step, prefix="test")
        self.log_histograms(trainer, "test", step=trainer.global_step)

    # --------------------------------------------------------------- logging
    def collect(self, trainer, pl_module, batch) -> None:
        """Keep the first batch for the figures and this batch's histogram values."""
        x_raw = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self._batch is None:
            self._batch = x_raw[: self.max_batch]
        histograms = getattr(pl_module, "histograms", None)
        if histograms is None or not trainer.is_global_zero:
            return
        with torch.no_grad():
            values = histograms(x_raw)
        for name, value in values.items():
            self._values.setdefault(name, []).append(value.detach().flatten().float().cpu())

    def log_histograms(self, trainer, prefix: str, step: int) -> None:
        """Write the collected values as TensorBoard histograms `<prefix>/<name>`."""
        if not trainer.is_global_zero:
            return
        for name, parts in self._values.items():
            values = torch.cat(parts)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_histogram(f"{prefix}/{name}", values, global_step=step)
        self._values = {}

    def log_figures(
        self, trainer, pl_module, x_raw: torch.Tensor, step: int, prefix: str = "images"
    ):
        """Compute and write the model's figures (rank zero only)."""
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            figures = pl_module.figures(x_raw)
        images = Path(trainer.default_root_dir) / "images"
        for name, image in figures.items():
            image = enlarge(image.detach().float().cpu().clamp(0, 1))
            for logger in trainer.loggers:
                log_image(logger, f"{prefix}/{name}", image, step)
            if self.save_png:
                if prefix == "images":
                    path = images / name / f"epoch_{step:03d}.png"
                else:
                    path = images / prefix / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                torchvision.utils.save_image(image, path)


def enlarge(image: torch.Tensor, min_side: int = 256, max_factor: int = 8) -> torch.Tensor:
    """Nearest-neighbour upscaling of small grids [C, H, W] (8x8 digits) so that they are
    readable in TensorBoard; pixels stay sharp squares."""
    factor = max(1, min(max_factor, min_side // max(image.shape[-2:])))
    return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
