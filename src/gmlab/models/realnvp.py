"""RealNVP as a gmlab density model: the flow part (`model/flow=realnvp`) over the
dequantized unit-cube image, an isotropic Gaussian base."""

from __future__ import annotations

import contextlib
import logging
from collections import deque

import torch

from gmlab.distributions.normal import std_normal_log_prob_flat
from gmlab.errors import ConfigError, ShapeError
from gmlab.models.base import GenerativeModel, check_fused_clipping, image_grid
from gmlab.models.parts import build_part, preset_part, scheduler_or_preset
from gmlab.nn.flows import recalibrate_batch_norm, running_statistics

AMP = ("auto", "bf16", "none")
log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX); None
    when this torch cannot tell. Elsewhere bf16 is emulated, slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


class RealNVP(GenerativeModel):
    """RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): a flow z = f(y) of the dequantized
    image y in [0,1]^D (the `Preprocessor`, log-det 0) to a latent of the image's shape,

        log p(y) = log N(z; 0, I) + log|det dz/dy|     (every log-det included: exact).

    Args:
        data_shape: (C, H, W) of the raw images.
        preprocess: `Preprocessor` options (must give unit-cube inputs: scale "unit", no
            binarization).
        flow: the flow part, a config dict with `_target_` (`gmlab.nn.flows.build_realnvp`
            and its options); the model supplies `shape`. None: conf/model/realnvp.yaml's.
        optimizer, lr_scheduler: part configs (`GmlabModule.configure_optimizers`; None:
            conf/model/realnvp.yaml's; an empty lr_scheduler: constant lr).
        weight_decay: L2 penalty on the weight-norm scales g (the paper's regularizer; the
            other parameters get none).
        max_grad_norm: clip the global gradient norm to this (null: no clipping, or the
            trainer's `gradient_clip_val`; the two together are refused).
        amp: "auto" (bf16 autocast of the s/t nets on CUDA, float32 elsewhere), "bf16"
            (also on CPU) or "none". Log-dets always accumulate in float32.
        compile: `torch.compile` the flow's normalizing direction (training and density
            evaluation; sampling stays eager). Off by default: minutes to start on a CPU.
        sample_temperature: standard deviation of the base distribution in `sample`.
        bn_calibration_batches: before every validation and test, the batch norms' running
            statistics are recomputed with the current weights over the last this-many
            training batches (`recalibrate_batch_norm`; 0: keep the momentum averages).
            Under DDP the processes' statistics are then averaged (exact over all their
            batches).
    """

    checkpoint_version = 1  # 0: flat flow options, `lr` and `lr_schedule` (gmlab.models.compat)

    def __init__(
        self,
        data_shape,
        preprocess: dict | None = None,
        flow: dict | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        weight_decay: float = 5e-5,
        max_grad_norm: float | None = 100.0,
        amp: str = "auto",
        compile: bool = False,
        sample_temperature: float = 1.0,
        bn_calibration_batches: int = 20,
    ) -> None:
        super().__init__(data_shape, preprocess)
        self.save_hyperparameters()
        self.hparams["flow"] = dict(flow or preset_part("realnvp", "flow"))
        self.hparams["optimizer"] = optimizer or preset_part("realnvp", "optimizer")
        self.hparams["lr_scheduler"] = scheduler_or_preset(lr_scheduler, "realnvp")
        if len(self.data_shape) != 3:
            raise ShapeError(f"RealNVP models images [C, H, W], got data_shape {self.data_shape}")
        if self.preprocess.discrete or self.preprocess.scale != "unit":
            raise ConfigError(
                "RealNVP needs dequantized unit-cube inputs: preprocess.scale=unit, "
                "preprocess.binarize=null"
            )
        if amp not in AMP:
            raise ConfigError(f"model.amp must be one of {AMP}, got {amp!r}")
        self.flow = build_part(self.hparams.flow, "flow", shape=self.data_shape)
        self.recent_batches: deque[torch.Tensor] = deque(maxlen=bn_calibration_batches)
        if compile:
            self.flow.compile()  # one graph for the whole normalizing direction

    # ------------------------------------------------------------- density
    def autocast(self):
        """bf16 autocast for the s/t nets where configured (a no-op context otherwise)."""
        amp, device = self.hparams.amp, self.device.type
        if amp == "bf16" or (amp == "auto" and device == "cuda"):
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """[B] log p(y) in nats of unit-cube inputs y [B, C, H, W] (float32)."""
        with self.autocast():
            z, log_det = self.flow(y)
        return std_normal_log_prob_flat(z.float()) + log_det.float()

    def log_likelihood(self, x_raw: torch.Tensor) -> torch.Tensor:
        y, log_det = self.prepare(x_raw)
        return self.log_prob(y) + log_det

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.recent_batches.append(batch[0].detach())  # maxlen 0 (recalibration off) keeps none
        y, log_det = self.prepare(batch[0], train=True)
        loss = self.to_bits(self.log_prob(y) + log_det).mean()
        self.check_finite(loss, "train/loss", batch_idx)
        self.log_step({"train/loss": loss}, y.shape[0], prog_bar=True)
        return loss

    @torch.no_grad()
    def recalibrate_batch_norm(self) -> int:
        """Running batch-norm statistics := exact averages over `recent_batches` (freshly
        dequantized) under the current weights; returns the number of batches used.

        Under multi-process training every rank holds as many recent batches as the others
        (they step together), so averaging the ranks' statistics gives the exact averages
        over all ranks' batches, and every rank validates, tests and saves the same ones.
        """

        def push(x_raw: torch.Tensor) -> None:
            self.log_prob(self.prepare(x_raw, train=True)[0])

        used = recalibrate_batch_norm(self.flow, self.recent_batches, push)
        if self._trainer is not None and self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            for buffer in running_statistics(self.flow):
                buffer.copy_(strategy.reduce(buffer.clone(), reduce_op="mean"))
        return used

    def on_validation_epoch_start(self) -> None:
        self.recalibrate_batch_norm()  # a no-op before the first training batch

    def on_test_epoch_start(self) -> None:
        self.recalibrate_batch_norm()

    # ------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, temperature: float | None = None) -> torch.Tensor:
        """[n, C, H, W] images in [0, 255] from z ~ N(0, temperature^2 I)."""
        t = self.hparams.sample_temperature if temperature is None else temperature
        z = torch.randn((n, *self.data_shape), device=self.device) * t
        was_training = self.flow.training
        self.flow.eval()  # batch norm inverts with its running statistics
        try:
            with self.autocast():
                y, _ = self.flow.inverse(z)
        finally:
            self.flow.train(was_training)
        return self.to_data(y.float())

    def figures(self, x_raw: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = self.preprocess.num_levels - 1
        return {
            "samples": image_grid(self.sample(64, 1.0) / levels),
            "samples_t0.7": image_grid(self.sample(64, 0.7) / levels),
        }

    # ------------------------------------------------------------ training
    def optimizer_parameters(self) -> list[dict]:
        """Two groups: the weight-norm scales g with `weight_decay`, the rest with none."""
        decay, rest = [], []
        for name, param in self.named_parameters():
            (decay if name.endswith("weight_g") else rest).append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]

    def setup(self, stage: str) -> None:
        """The trainer checks (`GmlabModule.setup`), with `max_grad_norm` as the run's one
        clipping setting: refused beside `trainer.gradient_clip_val`, and seen by the
        fused-optimizer check under mixed precision. Warns when bf16 would be emulated."""
        super().setup(stage)
        on_cpu = self._trainer is not None and self.trainer.strategy.root_device.type == "cpu"
        if self.hparams.amp == "bf16" and on_cpu and cpu_has_native_bf16() is False:
            log.warning(
                "model.amp=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): bf16 is "
                "emulated there and the s/t nets run several times slower than in float32 "
                "(docs/speed.md); model.amp=none trains in float32"
            )
        clip = self.hparams.max_grad_norm
        if self._trainer is None or not clip:
            return
        if self.trainer.gradient_clip_val:
            raise ConfigError(
                f"model.max_grad_norm={clip} and trainer.gradient_clip_val="
                f"{self.trainer.gradient_clip_val} both clip RealNVP's gradients: set one "
                "(model.max_grad_norm=null leaves clipping to the trainer)"
            )
        clip_setting = ("model.max_grad_norm", clip)
        check_fused_clipping(self.hparams.get("optimizer"), self.trainer, clip_setting)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip the global gradient norm to `max_grad_norm` (else as the trainer says)."""
        if self.hparams.max_grad_norm:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.max_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
