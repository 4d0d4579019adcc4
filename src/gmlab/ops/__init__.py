"""Batched numerical building blocks shared by models and metrics (pure torch, any device)."""

from gmlab.ops.kmeans import assign, inertia, kmeans, kmeans_plusplus

__all__ = ["assign", "inertia", "kmeans", "kmeans_plusplus"]
