"""The warm-up / stable / cosine-decay learning-rate schedule, as a torch LR scheduler.

Models pick it with `model/lr_scheduler=wsd` and step it after every optimizer step; its
position is saved in the checkpoint like any torch scheduler's, so a resumed run continues
on the same curve.
"""

from __future__ import annotations

import math

import torch


def wsd_factor(
    step: int,
    warmup_steps: int = 0,
    decay_start: int | None = None,
    decay_steps: int = 0,
    min_factor: float = 0.0,
) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based); see `WarmupStableDecay`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_start is None or step < decay_start:
        return 1.0
    done = step - decay_start
    if done >= decay_steps:
        return min_factor
    cosine = 0.5 * (1.0 + math.cos(math.pi * done / decay_steps))
    return min_factor + (1.0 - min_factor) * cosine


class WarmupStableDecay(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up, a constant stretch, then a cosine decay ("WSD"), per optimizer step.

    lr(t) = base_lr * factor(t) for every parameter group, with

    factor(t) = (t + 1) / warmup_steps                       for t < warmup_steps
              = 1                                            until decay_start
              = m + (1 - m) (1 + cos(pi s / decay_steps)) / 2,  s = t - decay_start,
                                                             for 0 <= s < decay_steps
              = m                                            afterwards,

    m = min_factor. `decay_start: None` never decays (warm-up, then constant).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        decay_start: int | None = None,
        decay_steps: int = 0,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or decay_steps < 0:
            raise ValueError(
                f"warmup_steps and decay_steps must be >= 0, got {warmup_steps}, {decay_steps}"
            )
        if decay_start is not None and decay_start < 0:
            raise ValueError(f"decay_start must be >= 0 or null, got {decay_start}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must lie in [0, 1], got {min_factor}")
        self.warmup_steps = int(warmup_steps)
        self.decay_start = None if decay_start is None else int(decay_start)
        self.decay_steps = int(decay_steps)
        self.min_factor = float(min_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step `step` (0-based)."""
        return wsd_factor(
            step, self.warmup_steps, self.decay_start, self.decay_steps, self.min_factor
        )

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
