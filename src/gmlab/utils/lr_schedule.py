"""Learning-rate schedules that are pure functions of the optimizer step.

A schedule here keeps no state of its own: the learning rate at optimizer step t is
`base_lr * factor(t)`, recomputed before every step from the trainer's global step. A run
resumed from any checkpoint, even one written before a schedule was chosen, therefore
continues on exactly the curve it names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from gmlab.errors import ConfigError


@dataclass(frozen=True)
class WarmupStableDecay:
    """Linear warm-up, a constant stretch, then a cosine decay ("WSD").

    factor(t) = (t + 1) / warmup_steps                       for t < warmup_steps
              = 1                                            until decay_start
              = m + (1 - m) (1 + cos(pi s / decay_steps)) / 2,  s = t - decay_start,
                                                             for 0 <= s < decay_steps
              = m                                            afterwards,
    with m = min_factor. `decay_start: None` never decays (warm-up, then constant).
    """

    warmup_steps: int = 0
    decay_start: int | None = None
    decay_steps: int = 0
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError(
                f"model.lr_schedule: warmup_steps and decay_steps must be >= 0, got {self}"
            )
        if self.decay_start is not None and self.decay_start < 0:
            raise ConfigError(f"model.lr_schedule: decay_start must be >= 0, got {self}")
        if not 0.0 <= self.min_factor <= 1.0:
            raise ConfigError(f"model.lr_schedule: min_factor must lie in [0, 1], got {self}")

    @classmethod
    def from_config(cls, options: dict | None) -> WarmupStableDecay:
        """Build from a config mapping; unknown keys name the ones that exist."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"model.lr_schedule: unknown option(s) {unknown}; the options are {sorted(known)}"
            )
        return cls(**options)

    def factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_start is None or step < self.decay_start:
            return 1.0
        done = step - self.decay_start
        if done >= self.decay_steps:
            return self.min_factor
        cosine = 0.5 * (1.0 + math.cos(math.pi * done / self.decay_steps))
        return self.min_factor + (1.0 - self.min_factor) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, base_lr: float, step: int) -> float:
        """Set every parameter group's lr to base_lr * factor(step); returns that lr."""
        lr = base_lr * self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
