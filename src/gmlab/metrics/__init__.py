"""Metrics shared by every model: bits/dim, importance-weighted bounds, NDB, ..."""

from gmlab.metrics.bpd import bits_per_dim, nats_to_bits
from gmlab.metrics.ndb import NDB, ndb_score

__all__ = ["NDB", "bits_per_dim", "nats_to_bits", "ndb_score"]
