"""Per-batch preprocessing on the model's device: raw integer pixels -> model inputs.

Every density model in gmlab owns one `Preprocessor`; it maps a raw batch (uint8
pixels, or float points for 2-D toy data) to the tensor the network sees and returns
the log-det-Jacobian that turns the model's density back into a density on the unit
cube, so that `gmlab.metrics.bits_per_dim` is comparable across models.
"""

from __future__ import annotations

import math

import torch

from gmlab.errors import NonFiniteError, ShapeError

SCALES = ("unit", "symmetric")
BINARIZE = (None, "dynamic", "static")


class Preprocessor:
    """Map raw batches to model space and back.

    Steps, in order (each selected by config):
      1. `hflip` (training only): flip each image horizontally with probability 1/2.
      2. `binarize`: "dynamic" draws x ~ Bernoulli(pixel / 255) every call (MNIST VAEs),
         "static" thresholds at 128; the result is discrete {0, 1} and the model's
         log-likelihood is a log-pmf (`discrete` is True).
      3. otherwise dequantize: y = (x + u) / levels, u ~ U[0,1)^D (`dequantize=True`), or
         y = (x + 1/2) / levels (bin centres, `dequantize=False`).
      4. `scale`: "unit" keeps y in [0,1]; "symmetric" returns 2y - 1 in [-1,1] with
         log-det D ln 2.

    Float inputs (2-D toy data) pass through unchanged with log-det 0 (`continuous`).

    Args:
        dequantize: add uniform noise (True) or use bin centres (False).
        scale: "unit" or "symmetric".
        binarize: None, "dynamic" or "static".
        hflip: random horizontal flips while training.
        num_levels: integer levels of the raw data (256 for 8-bit images).
    """

    def __init__(
        self,
        dequantize: bool = True,
        scale: str = "unit",
        binarize: str | None = None,
        hflip: bool = False,
        num_levels: int = 256,
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"preprocess.scale must be one of {SCALES}, got {scale!r}")
        if binarize not in BINARIZE:
            raise ValueError(f"preprocess.binarize must be one of {BINARIZE}, got {binarize!r}")
        self.dequantize = dequantize
        self.scale = scale
        self.binarize = binarize
        self.hflip = hflip
        self.num_levels = num_levels

    @property
    def discrete(self) -> bool:
        """True when model inputs are binary and log-likelihoods are log-pmfs."""
        return self.binarize is not None

    def __call__(self, x: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw batch [B, *shape] -> (model input [B, *shape] float32, log-det [B]).

        log p_unit_cube(y) = log p_model(model input) + log-det.
        """
        if x.dim() < 2:
            raise ShapeError(f"expected a batch [B, ...], got a tensor of shape {tuple(x.shape)}")
        zeros = torch.zeros(x.shape[0], device=x.device)
        if x.is_floating_point():
            if not torch.isfinite(x).all():
                raise NonFiniteError("input batch contains NaN or inf values")
            return x.float(), zeros
        x = x.float()
        if train and self.hflip and x.dim() == 4:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.binarize == "dynamic":
            return torch.bernoulli(x / (self.num_levels - 1)), zeros
        if self.binarize == "static":
            return (x >= self.num_levels / 2).float(), zeros
        noise = torch.rand_like(x) if self.dequantize else torch.full_like(x, 0.5)
        y = (x + noise) / self.num_levels
        if self.scale == "symmetric":
            num_dims = x[0].numel()
            return 2.0 * y - 1.0, zeros + num_dims * math.log(2.0)
        return y, zeros

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> the dataset's value range (floats in [0, levels-1] for images)."""
        if self.discrete:
            return x.clamp(0, 1) * (self.num_levels - 1)
        if self.scale == "symmetric":
            x = (x + 1.0) / 2.0
        return (x * self.num_levels - 0.5).clamp(0, self.num_levels - 1)

    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Deterministic inverse of `to_pixels` (bin centres, no noise): pixels -> model input."""
        y = (pixels.float() + 0.5) / self.num_levels
        if self.discrete:
            return (pixels.float() >= self.num_levels / 2).float()
        return 2.0 * y - 1.0 if self.scale == "symmetric" else y

    def config(self) -> dict:
        return {
            "dequantize": self.dequantize,
            "scale": self.scale,
            "binarize": self.binarize,
            "hflip": self.hflip,
            "num_levels": self.num_levels,
        }
