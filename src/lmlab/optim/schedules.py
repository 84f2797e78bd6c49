"""Learning-rate schedules: each group's base LR times a multiplier m(s) of the optimizer step s.

Schedules are stepped once per optimizer step (Lightning ``interval: step``). At step s = 0, 1, 2, ...
the LR of every param group is ``base_lr * multiplier(s)``; the multiplier never replaces the LR
(setting the LR to m(s) itself would ignore the configured LR). ``multiplier`` is plain float math
(``math.cos``), so tests check the formula.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def _check_steps(warmup_steps: int, total_steps: int | None = None) -> None:
    """Raise before any work if step counts are not usable; field names as users write them."""
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if value is not None and (isinstance(value, bool) or not float(value).is_integer()):
            raise ValueError(f"sched.{name}={value!r} must be an integer")
    if warmup_steps < 0:
        raise ValueError(f"sched.warmup_steps={warmup_steps} must be >= 0")
    if total_steps is None:
        return
    if total_steps <= 0:
        raise ValueError(f"sched.total_steps={total_steps} must be > 0")
    if warmup_steps > total_steps:
        raise ValueError(
            f"sched.warmup_steps={warmup_steps} is longer than the run (sched.total_steps={total_steps})"
        )


def _check_ratio(name: str, value: float, low_open: bool = False) -> None:
    low_ok = value > 0.0 if low_open else value >= 0.0
    if not (low_ok and value <= 1.0):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"sched.{name}={value} must be in {bounds}")


class MultiplierSchedule(LRScheduler):
    """Base: ``lr = base_lr * multiplier(last_epoch)``; subclasses define ``multiplier``.

    ``last_epoch`` counts optimizer steps here (0 at construction, +1 per ``step()``).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, last_epoch)

    def warmup(self, s: int) -> float:
        """Linear warmup (s+1)/W, reaching 1 at s = W-1 so the first step already moves."""
        return (s + 1) / self.warmup_steps

    def multiplier(self, s: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        m = self.multiplier(self.last_epoch)
        return [base_lr * m for base_lr in self.base_lrs]


class _DecayingSchedule(MultiplierSchedule):
    """Warmup followed by a decay to ``min_lr_ratio`` that ends exactly at ``total_steps``."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        _check_steps(warmup_steps, total_steps)
        _check_ratio("min_lr_ratio", min_lr_ratio)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, warmup_steps, last_epoch)

    def progress(self, s: int, start: int) -> float:
        """Fraction of the decay phase [start, total_steps] done at step s, clamped to [0, 1]."""
        length = self.total_steps - start
        return 1.0 if length <= 0 else min(1.0, max(0.0, (s - start) / length))


class WarmupCosine(_DecayingSchedule):
    """Warmup, then half a cosine from 1 down to min_lr_ratio at total_steps (held after)."""

    def multiplier(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        r = self.min_lr_ratio
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * self.progress(s, self.warmup_steps)))


class WarmupLinear(_DecayingSchedule):
    """Warmup, then a straight line from 1 down to min_lr_ratio at total_steps (held after)."""

    def multiplier(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        return 1.0 - (1.0 - self.min_lr_ratio) * self.progress(s, self.warmup_steps)


class WSD(_DecayingSchedule):
    """Warmup-stable-decay: warmup, constant 1, then linear decay over the last decay_fraction of the run.

    The decay starts at ``total_steps - decay_fraction * total_steps``, or where warmup ends if that is
    later, so the run can be stopped at any point of the stable phase and annealed from there.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        decay_fraction: float = 0.1,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ):
        _check_ratio("decay_fraction", decay_fraction, low_open=True)
        self.decay_fraction = float(decay_fraction)
        super().__init__(optimizer, warmup_steps, total_steps, min_lr_ratio, last_epoch)

    @property
    def decay_start(self) -> float:
        return max(float(self.warmup_steps), self.total_steps * (1.0 - self.decay_fraction))

    def multiplier(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        return 1.0 - (1.0 - self.min_lr_ratio) * self.progress(s, self.decay_start)


class WarmupConstant(MultiplierSchedule):
    """Warmup, then the base LR for the rest of the run."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        _check_steps(warmup_steps)
        super().__init__(optimizer, warmup_steps, last_epoch)

    def multiplier(self, s: int) -> float:
        return self.warmup(s) if s < self.warmup_steps else 1.0


class InverseSqrt(MultiplierSchedule):
    """Warmup, then sqrt(W / (s+1)): the original Transformer schedule, continuous at s = W-1."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        _check_steps(warmup_steps)
        if warmup_steps < 1:
            raise ValueError(
                f"sched.warmup_steps={warmup_steps} must be >= 1 for inverse_sqrt (it sets the decay scale)"
            )
        super().__init__(optimizer, warmup_steps, last_epoch)

    def multiplier(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        return math.sqrt(self.warmup_steps / max(s + 1, self.warmup_steps))
