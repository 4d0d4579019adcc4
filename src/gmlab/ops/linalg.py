"""Linear-algebra helpers shared by the Gaussian models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def cholesky_float64_retry(build: Callable[[torch.dtype], Tensor], dtype: torch.dtype) -> Tensor:
    """[..., n, n] lower Cholesky factor of the SPD matrices `build(dtype)`.

    A float32 product such as A A^T or A^T D^-1 A carries rounding of ~1e-7 of its largest
    entries; for ill-conditioned matrices that can make an SPD matrix numerically
    indefinite. Where the factorisation fails, the matrices are rebuilt and factored in
    float64 and the factor is cast back to `dtype` (one flag check otherwise). Raises
    `torch.linalg.LinAlgError` when float64 fails too.
    """
    chol, info = torch.linalg.cholesky_ex(build(dtype))
    if bool((info > 0).any()):
        chol = torch.linalg.cholesky(build(torch.float64)).to(dtype)
    return chol
