"""Metrics shared by every model: bits/dim, importance-weighted bounds, NDB, ..."""

from gmlab.metrics.bpd import bits_per_dim, nats_to_bits

__all__ = ["bits_per_dim", "nats_to_bits"]
