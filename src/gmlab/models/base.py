"""Base LightningModules: the model protocol that eval, callbacks and metrics rely on.

`GmlabModule` is what every gmlab model shares (checkpoint metadata, NaN/inf guards, the
optimizer and lr scheduler built from their part configs, `figures()` / `histograms()` for
the image callback); `GenerativeModel` adds the density-model protocol and its bits/dim.
See docs/architecture.md.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterable, Mapping

import lightning as L
import torch
import torchvision

from gmlab.data.preprocess import Preprocessor
from gmlab.distributions.likelihoods import EventSpace, Likelihood
from gmlab.errors import ConfigError, NonFiniteError, ShapeError
from gmlab.metrics.bpd import bits_per_dim, nats_to_bits
from gmlab.models.parts import build_part
from gmlab.utils.metric_kinds import BY_NAME, kind, stage_kinds

# keys of an lr_scheduler config that are Lightning's, not the scheduler's
SCHEDULER_LOOP_KEYS = ("interval", "frequency")


def build_optimization(
    params: Iterable, optimizer: Mapping | None, lr_scheduler: Mapping | None = None
):
    """The optimizer over `params` (tensors or param-group dicts) and its lr scheduler, in
    the form `LightningModule.configure_optimizers` returns.

    `optimizer` is the config of a `torch.optim` class (`_target_`, its options; usually
    `_partial_: true`: Hydra builds a partial, completed here with `params`).
    `lr_scheduler` is the config of a torch LR scheduler (completed with the optimizer)
    plus Lightning's `interval` ("step":
    stepped after every optimizer step, the default; "epoch": after every epoch) and
    `frequency`; empty or None: constant lr. The scheduler's state is saved in checkpoints,
    so a resumed run continues its curve.
    """
    opt = build_part(optimizer, "optimizer", params=params)
    if not lr_scheduler:
        return opt
    spec = dict(lr_scheduler)
    loop = {key: spec.pop(key) for key in SCHEDULER_LOOP_KEYS if key in spec}
    loop.setdefault("interval", "step")
    if loop["interval"] not in ("step", "epoch"):
        raise ConfigError(
            f"model.lr_scheduler.interval must be step or epoch, got {loop['interval']!r}"
        )
    scheduler = build_part(spec, "lr_scheduler", optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, **loop}}


def writes_step_logs(trainer: L.Trainer | None) -> bool:
    """Whether Lightning writes the current training step's values to its loggers (every
    `trainer.log_every_n_steps`; always without a trainer or under `fast_dev_run`). It is
    the logger connector's own test, which Lightning's LR monitor also reads."""
    if trainer is None or trainer.fast_dev_run:
        return True
    return bool(getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True))


HALF_WEIGHTS = ("16-true", "bf16-true")  # Lightning precisions that convert the weights


def check_precision(trainer: L.Trainer) -> None:
    """ConfigError for half-precision weights: log-likelihoods, bits/dim and EM statistics
    need float32 (or float64) weights; mixed precision computes in half and keeps them."""
    precision = str(trainer.precision)
    if precision in HALF_WEIGHTS:
        mixed = precision.replace("true", "mixed")
        raise ConfigError(
            f"trainer.precision={precision} stores the weights in half precision, too coarse "
            f"for log-likelihoods: use trainer.precision={mixed} (half-precision compute, "
            "float32 weights), 32-true or 64-true"
        )


def check_fused_clipping(
    optimizer: Mapping | None, trainer: L.Trainer, clip: tuple[str, float | None] | None = None
) -> None:
    """ConfigError for a fused optimizer with gradient clipping under mixed precision: the
    fused kernel unscales gradients inside its step, after Lightning would clip them.
    `clip`: (option, value) of the clipping in force; default the trainer's
    `gradient_clip_val` (a model that clips by itself, RealNVP, passes its own)."""
    option, value = clip or ("trainer.gradient_clip_val", trainer.gradient_clip_val)
    mixed = "mixed" in str(trainer.precision)
    if optimizer and optimizer.get("fused") and value and mixed:
        raise ConfigError(
            f"{option}={value} under trainer.precision={trainer.precision} needs an unfused "
            f"optimizer: set model.optimizer.fused=false (or {option}=null: no clipping)"
        )


def check_batch_shape(model: L.LightningModule, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise `ShapeError` unless `x` is a batch [B, *shape]."""
    if tuple(x.shape[1:]) != tuple(shape):
        raise ShapeError(
            f"{type(model).__name__} expects batches of shape "
            f"[B, {', '.join(map(str, shape))}], got {list(x.shape)}"
        )


class GmlabModule(L.LightningModule, abc.ABC):
    """Shared behaviour of all gmlab LightningModules. Abstract: a model implements
    `training_step` (a class without it cannot be instantiated).

    Class attributes `monitor` / `monitor_mode` name the metric that picks the best
    checkpoint (`gmlab.callbacks.Checkpoint` reads them).

    Optimization: a model whose hyperparameters hold `optimizer` (and `lr_scheduler`) part
    configs gets them built by `configure_optimizers` over `optimizer_parameters()`.

    `checkpoint_version`: recorded in every checkpoint; a class raises it when its
    constructor options change, and `gmlab.models.compat` converts the older files.
    """

    monitor: str = "val/bpd"
    monitor_mode: str = "min"
    checkpoint_version: int = 0

    @abc.abstractmethod
    def training_step(self, batch, batch_idx: int):
        """One training step: the loss to minimise (automatic optimization), or None after
        stepping the model itself (EM)."""

    def optimizer_parameters(self) -> Iterable:
        """What the optimizer updates: parameters or param-group dicts (default: all)."""
        return self.parameters()

    def setup(self, stage: str) -> None:
        """Check the trainer's settings against the model before any batch runs."""
        if self._trainer is not None:
            check_precision(self.trainer)
            check_fused_clipping(self.hparams.get("optimizer"), self.trainer)

    def configure_optimizers(self):
        return build_optimization(
            self.optimizer_parameters(),
            self.hparams.get("optimizer"),
            self.hparams.get("lr_scheduler"),
        )

    def log_step(
        self, metrics: Mapping[str, torch.Tensor | float], batch_size: int, prog_bar: bool = False
    ) -> None:
        """Log per-step training values (on_step only) on the steps Lightning writes to its
        loggers, and skip them on the others: their values would be dropped there, and
        every `self.log` call costs a walk over Lightning's metric object, a noticeable
        share of a small model's step. The progress bar then shows the values of the last
        written step."""
        if writes_step_logs(self._trainer):
            for name, value in metrics.items():
                self.log(name, value, prog_bar=prog_bar, batch_size=batch_size)

    def check_finite(self, value: torch.Tensor, metric: str, batch_idx: int | None = None) -> None:
        """Raise `NonFiniteError` naming the metric, stage and batch if `value` has NaN/inf."""
        if torch.isfinite(value).all():
            return
        stage = "train"
        if self._trainer is not None:
            if self.trainer.sanity_checking or self.trainer.validating:
                stage = "validation"
            elif self.trainer.testing:
                stage = "test"
        where = f"{stage} batch {batch_idx}" if batch_idx is not None else stage
        epoch = f", epoch {self.current_epoch}" if self._trainer is not None else ""
        raise NonFiniteError(
            f"{metric} is not finite (NaN or inf) at {where}{epoch}. The run was stopped; "
            "the last checkpoint written before this batch is intact. Check the data for "
            "NaN/inf values, or lower the learning rate / raise the variance floor."
        )

    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named images [3 or 1, H, W] in [0, 1] for TensorBoard/PNG, from a raw batch."""
        return {}

    def histograms(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named 1-D tensors of values whose histograms the image callback logs."""
        return {}

    @staticmethod
    def batch_inputs(batch):
        """The inputs of a batch: its first element for (x, y) pairs, else the batch."""
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def check_batch(self, batch, batch_idx: int) -> None:
        """Stop on float inputs with NaN/inf, naming the batch (integer images cannot hold them)."""
        x = self.batch_inputs(batch)
        if torch.is_tensor(x) and x.is_floating_point():
            self.check_finite(x, "input batch", batch_idx)

    def on_train_batch_start(self, batch, batch_idx: int):
        self.check_batch(batch, batch_idx)
        if not self.automatic_optimization or not self.trainer.optimizers:
            return
        if self.trainer.lr_scheduler_configs:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log_step({"train/lr": lr}, batch_size=self.batch_inputs(batch).shape[0])

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self.check_batch(batch, batch_idx)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0):
        self.check_batch(batch, batch_idx)

    def metric_kinds(self) -> dict[str, dict]:
        """{metric name: kind} for the run record (`gmlab.utils.metric_kinds`), by default
        from the names (`*/nll`, `*/bpd`: exact; `*/acc`: accuracy; ...). Models whose
        likelihood metrics are bounds override it."""
        return stage_kinds({name: kind(value) for name, value in BY_NAME.items()})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class and the run config so `gmlab-eval` can rebuild any checkpoint."""
        cls = type(self)
        checkpoint["gmlab"] = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "version": cls.checkpoint_version,
        }
        if getattr(self, "run_config", None):
            checkpoint["gmlab"]["config"] = self.run_config


class GenerativeModel(GmlabModule):
    """A density model over raw data batches of shape [B, *data_shape].

    Abstract: a density model implements `log_likelihood`, `sample` and `training_step`;
    `reconstruct` where it has an encoder (docs/architecture.md, "Adding a model family").

    Args:
        data_shape: shape of one sample, e.g. (1, 28, 28) or (2,).
        preprocess: keyword arguments of `gmlab.data.Preprocessor`.
    """

    def __init__(self, data_shape: tuple[int, ...] | list[int], preprocess: dict | None = None):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.preprocess = Preprocessor(**(preprocess or {}))

    # ------------------------------------------------------------ protocol
    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one sample."""
        return math.prod(self.data_shape)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    @abc.abstractmethod
    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] log p(y) in nats (unit-cube density of the dequantized batch, or log-pmf)."""

    @abc.abstractmethod
    def sample(self, n: int) -> torch.Tensor:
        """[n, *data_shape] samples in the dataset's pixel range."""

    def reconstruct(self, x_raw: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, *data_shape] reconstructions in pixel range (mask: True = observed)."""
        raise NotImplementedError

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space values [n, ...] -> [n, *data_shape] in the dataset's value range
        (`Preprocessor.to_pixels`: pixels for integer data, continuous points as they are)."""
        return self.preprocess.to_pixels(x.reshape(-1, *self.data_shape))

    def build_likelihood(self, spec: Mapping) -> Likelihood:
        """The decoder likelihood from its part dict (`conf/model/likelihood/`), given the
        data's `EventSpace`: the model-space range and the number of levels (the discretized
        logistic's bins)."""
        bounds = self.preprocess.bounds
        if bounds is None:
            raise ConfigError(
                "the decoder likelihoods need bounded inputs: model/preprocess="
                "dequantize_logit suits densities over the real line (MFA, Gaussian); use "
                "dequantize_unit or dequantize_symmetric"
            )
        space = EventSpace(len(self.data_shape), *bounds, self.preprocess.num_levels or 256)
        return build_part(spec, "likelihood", space=space)

    def bits_per_dim(self, x_raw: torch.Tensor) -> torch.Tensor:
        """[B] bits/dim on the shared convention (log-pmf -> bits for binarized data)."""
        return self.to_bits(self.log_likelihood(x_raw))

    def to_bits(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """[B] nats -> bits/dim: (-log p(y) + D ln 256) / (D ln 2) for dequantized 8-bit pixels
        (`bits_per_dim`), -log2 P / D for binarized data (a pmf) and for continuous points
        (a density: may be < 0)."""
        if self.preprocess.discrete or self.preprocess.continuous:
            return nats_to_bits(log_likelihood, self.num_dims)
        return bits_per_dim(log_likelihood, self.num_dims, self.preprocess.num_levels)

    # ------------------------------------------------------------- helpers
    def prepare(
        self, x_raw: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the raw batch's shape, then preprocess: (model input, log-det [B]), in
        float64 when the model is (`trainer.precision=64-true`), else in float32."""
        check_batch_shape(self, x_raw, self.data_shape)
        x, log_det = self.preprocess(x_raw, train=train)
        if self.dtype == torch.float64:
            return x.double(), log_det.double()
        return x, log_det

    # ----------------------------------------------------- shared eval steps
    def evaluate_batch(self, x_raw: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        """Log `{stage}/nll` and `{stage}/bpd` for one batch; returns log-likelihoods [B]."""
        return self.log_density_metrics(self.log_likelihood(x_raw), stage, batch_idx)

    def log_density_metrics(self, ll: torch.Tensor, stage: str, batch_idx: int) -> torch.Tensor:
        """Log `{stage}/nll` and `{stage}/bpd` of a batch's log-likelihoods [B]; returns them."""
        self.check_finite(ll, f"{stage}/nll", batch_idx)
        bs = ll.shape[0]
        self.log(f"{stage}/nll", -ll.mean(), batch_size=bs, sync_dist=True, prog_bar=stage == "val")
        self.log(
            f"{stage}/bpd", self.to_bits(ll).mean(), batch_size=bs, sync_dist=True, prog_bar=True
        )
        return ll

    def validation_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch[0], "val", batch_idx)

    def test_step(self, batch, batch_idx: int):
        self.evaluate_batch(batch[0], "test", batch_idx)

    # -------------------------------------------------------------- figures
    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples and (where supported) reconstructions as image grids."""
        if not self.is_image:
            return {}
        out = {}
        levels = self.preprocess.num_levels - 1
        with contextlib.suppress(NotImplementedError):
            out["samples"] = image_grid(self.sample(64) / levels)
        try:
            x = x_raw[:32]
            rec = self.reconstruct(x)
            pairs = torch.stack([x.float() / levels, rec / levels], dim=1).flatten(0, 1)
            out["reconstructions"] = image_grid(pairs, nrow=16)
        except NotImplementedError:
            pass
        return out


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """[N, C, H, W] values in [0, 1] -> one [C', H', W'] grid image (clamped, on CPU)."""
    images = images.detach().float().cpu().clamp(0, 1)
    return torchvision.utils.make_grid(images, nrow=nrow, padding=1, pad_value=1.0)
