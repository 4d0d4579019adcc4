"""Batched numerical building blocks shared by models and metrics (pure torch, any device)."""

from gmlab.ops.kmeans import assign, inertia, kmeans, kmeans_plusplus
from gmlab.ops.linalg import cholesky_float64_retry

__all__ = ["assign", "cholesky_float64_retry", "inertia", "kmeans", "kmeans_plusplus"]
