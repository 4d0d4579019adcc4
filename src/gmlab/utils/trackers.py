"""Experiment trackers beside TensorBoard and CSV (`logger=mlflow`, `logger=wandb`, the
`loggers` extra): Lightning's loggers, kept local by their configs, with one tracker run
per gmlab run, and `log_image`, which writes an image to whichever of them (or TensorBoard)
a run has. docs/loggers.md."""

from __future__ import annotations

import importlib
import os
from urllib.parse import urlparse

import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from gmlab.errors import ConfigError


def require(module: str, logger: str, package: str) -> None:
    """ConfigError naming the extra to install when `module` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"logger={logger} needs the {package} package: pip install -e '.[loggers]' in "
            f"the gmlab checkout (or pip install {package})"
        ) from None


class LocalMLFlowLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger` that may write a file store (`tracking_uri: file:<dir>`).

    MLflow >= 3 keeps its file store in maintenance mode and refuses it unless
    `MLFLOW_ALLOW_FILE_STORE` is set; for a `file:` URI (or a plain path) it is set here
    to true unless the environment already says otherwise. Other URIs (`sqlite:///...`,
    a server) are passed on unchanged."""

    def __init__(self, *args, tracking_uri: str | None = None, **kwargs):
        require("mlflow", "mlflow", "mlflow-skinny")
        if tracking_uri is None or urlparse(str(tracking_uri)).scheme in ("", "file"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)


class WandbRunLogger(WandbLogger):
    """Lightning's `WandbLogger` whose W&B run ends with the gmlab run: `end_run` at the
    end of a run (`gmlab.utils.runs.finish_run`), exit code 1 when Lightning stops on an
    exception or a signal. Lightning's logger leaves the run open, and the next job of a
    multirun in the same process would log into it."""

    def __init__(self, *args, **kwargs):
        require("wandb", "wandb", "wandb")
        super().__init__(*args, **kwargs)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success":  # "failed": an exception; "finished": SIGTERM
            self.end_run(exit_code=1)

    def end_run(self, exit_code: int = 0) -> None:
        """Finish the W&B run this logger started (files flushed, `wandb.run` cleared);
        nothing on ranks > 0 or when no run was started."""
        run, self._experiment = self._experiment, None
        if run is not None:
            run.finish(exit_code=exit_code)


def log_image(logger, tag: str, image: torch.Tensor, step: int) -> None:
    """Write a [C, H, W] image in [0, 1] to `logger`: TensorBoard and MLflow at `step`
    (MLflow: an image artifact per step under `tag`), W&B at its current step (it keeps
    one step axis for all values); a logger without images (CSV) is left alone."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image, global_step=step)
    elif isinstance(logger, (MLFlowLogger, WandbLogger)):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[pixels])
        else:
            logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
