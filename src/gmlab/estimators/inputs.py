"""Input checks of the estimators: every array becomes a [N, d] tensor of one of two kinds,
fixed at fit time and applied again to every later input.

* "pixels" (the fit got an integer array): 8-bit pixel values 0..255, dequantized by the
  model. Later inputs may be any integer dtype, or floats holding whole numbers (a lossless
  cast); anything else, and any value outside 0..255, is refused.
* "continuous" (the fit got floats): real values in any units. Later integer inputs are
  cast to float64, as a float array with the same values would be.

Float values beyond float32's range are refused before the model casts them to float32
(they would turn into inf and NaN scores).
"""

from __future__ import annotations

import numpy as np
import torch

from gmlab.errors import NonFiniteError, ShapeError

PIXELS, CONTINUOUS = "pixels", "continuous"
PIXEL_MAX = 255
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def as_batch(X, name: str = "X", allow_images: bool = True) -> tuple[torch.Tensor, bool]:
    """Any array or tensor -> ([N, d] tensor of finite real numbers, whether X was not a
    tensor). Images [N, *shape] are flattened when `allow_images`."""
    is_numpy = not torch.is_tensor(X)
    if is_numpy:
        try:
            X = torch.as_tensor(np.asarray(X))
        except (TypeError, ValueError) as exc:
            raise ShapeError(f"{name} must be an array or tensor of numbers: {exc}") from exc
    if X.dtype == torch.bool or X.is_complex():
        raise ShapeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.dim() == 1:
        raise ShapeError(
            f"{name} must be 2-D [n_samples, n_features], got a 1-D array of shape "
            f"{tuple(X.shape)}; Reshape your data with X.reshape(1, -1) for a single sample"
        )
    if X.dim() > 2:
        if not allow_images:
            raise ShapeError(f"{name} must be 2-D, got shape {tuple(X.shape)}")
        X = X.reshape(X.shape[0], -1)
    if X.shape[0] == 0:
        raise ShapeError(f"{name} has no samples (shape {tuple(X.shape)})")
    if X.is_floating_point():
        if not torch.isfinite(X).all():
            raise NonFiniteError(f"{name} contains NaN or infinite values")
        largest = float(X.abs().max())
        if largest > FLOAT32_MAX:
            raise NonFiniteError(
                f"{name} has values up to {largest:.3g} in magnitude, beyond float32's range "
                f"({FLOAT32_MAX:.3g}) in which MFA computes: rescale {name}"
            )
    return X, is_numpy


def kind_of(x: torch.Tensor) -> str:
    """The kind a fit on `x` gives: integer dtypes are pixels, floats continuous."""
    return CONTINUOUS if x.is_floating_point() else PIXELS


def as_kind(x: torch.Tensor, kind: str, name: str = "X") -> torch.Tensor:
    """A validated batch (`as_batch`) in the form a model fitted on `kind` expects: uint8
    pixels, or float values."""
    if kind == CONTINUOUS:
        return x if x.is_floating_point() else x.double()
    if x.is_floating_point() and not torch.equal(x, x.round()):
        dtype = str(x.dtype).removeprefix("torch.")
        raise ShapeError(
            f"{name} holds {dtype} values that are not whole numbers, but this MFA was fitted "
            "on integer input, taken as 8-bit pixels 0..255: pass the pixels (integers, or "
            "floats with whole values), or fit on float data to model continuous values"
        )
    low, high = int(x.min()), int(x.max())
    if low < 0 or high > PIXEL_MAX:
        raise ShapeError(
            f"{name} holds values from {low} to {high}, but integer input is taken as 8-bit "
            f"pixels 0..{PIXEL_MAX}: pass {name}.astype(float) to model the values as "
            "continuous, or rescale them to 0..255"
        )
    return x.to(torch.uint8)
