"""Linear-algebra helpers shared by the Gaussian models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gmlab.errors import SingularCovarianceError


def cholesky_float64_retry(
    build: Callable[[torch.dtype], Tensor],
    dtype: torch.dtype,
    what: str = "matrix",
    remedy: str = "",
) -> Tensor:
    """[K, n, n] lower Cholesky factors of the K SPD matrices `build(dtype)`.

    A float32 product such as A A^T or A^T D^-1 A carries rounding of ~1e-7 of its largest
    entries; for ill-conditioned matrices that can make an SPD matrix numerically
    indefinite. Where the factorisation fails, the matrices are rebuilt and factored in
    float64 and the factor is cast back to `dtype` (one flag check otherwise).

    Raises `SingularCovarianceError` when float64 fails too, naming the failing indices
    along the first dimension ("<what> 3, 17 ...") followed by `remedy`.
    """
    chol, info = torch.linalg.cholesky_ex(build(dtype))
    if bool((info > 0).any()):
        chol, info = torch.linalg.cholesky_ex(build(torch.float64))
        failed = torch.nonzero(info.reshape(-1) > 0).flatten().tolist()
        if failed:
            shown = ", ".join(map(str, failed[:10])) + (" ..." if len(failed) > 10 else "")
            raise SingularCovarianceError(
                f"{what} {shown} ({len(failed)} of {info.numel()}) not positive definite even "
                f"in float64. {remedy}".rstrip()
            )
        chol = chol.to(dtype)
    return chol
