"""LightningModules, one file per model family, over `gmlab.distributions` and `gmlab.nn`."""

from gmlab.models.base import GenerativeModel, GmlabModule

__all__ = ["GenerativeModel", "GmlabModule"]
