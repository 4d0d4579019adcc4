"""Linear-algebra helpers shared by the Gaussian models.

Symmetric positive definite systems are solved here by Cholesky (`cholesky_float64_retry`
then `torch.cholesky_solve` / `cholesky_inverse`), never by a general LU inverse or solve:
besides being half the work, a Cholesky factor fails visibly (`info > 0`) where the
matrix is not positive definite. Batched CPU LU (`torch.linalg.inv`, `linalg.solve`) is
also unsafe with several threads: for matrices above ~150 rows torch runs the batch's
MKL `getrf` calls in parallel, each of them threaded itself, and MKL then reports
"Parameter 6 was incorrect on entry to DLASWP", returns invalid pivots, or hangs
(pytorch/pytorch#142815, #141358; seen with torch 2.14 and oneMKL 2024.2 at two threads).
The batched Cholesky routines run the batch one matrix after another and agree across
thread counts to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gmlab.errors import SingularCovarianceError


def describe_indices(failed: Tensor, shown: int = 10) -> str:
    """A bool mask [K] -> "3, 17 (2 of K)": the True positions, the first `shown` listed."""
    idx = torch.nonzero(failed.reshape(-1)).flatten().tolist()
    listed = ", ".join(map(str, idx[:shown])) + (" ..." if len(idx) > shown else "")
    return f"{listed} ({len(idx)} of {failed.numel()})"


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
    float64 and the factor is cast back to `dtype` (one flag check otherwise; no retry
    when `dtype` is float64 already).

    Raises `SingularCovarianceError` when float64 fails too (a matrix that is not positive
    definite, or holds NaN), naming the failing indices along the first dimension
    ("<what> 3, 17 (2 of K) ...") followed by `remedy`.
    """
    chol, info = torch.linalg.cholesky_ex(build(dtype))
    if bool((info > 0).any()):
        if dtype != torch.float64:
            chol, info = torch.linalg.cholesky_ex(build(torch.float64))
        failed = info.reshape(-1) > 0
        if bool(failed.any()):
            raise SingularCovarianceError(
                f"{what} {describe_indices(failed)} not positive definite even in float64. "
                f"{remedy}".rstrip()
            )
        chol = chol.to(dtype)
    return chol
