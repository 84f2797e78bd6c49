"""Learning-rate schedules: each group's base LR times a multiplier m(s) of the optimizer step s.

Schedules are stepped once per optimizer step (Lightning ``interval: step``). At step s = 0, 1, 2, ...
the LR of every param group is ``base_lr * multiplier(s)``; the multiplier never replaces the LR
(setting the LR to m(s) itself would ignore the configured LR). ``multiplier`` is plain float math
(``math.cos``), so tests check the formula.

``warmup_steps`` is a number of steps, or a fraction of ``total_steps`` (0.1: the first tenth of the run),
so a schedule fits a run of any length without an edit.

A schedule's state (``state_dict``) is its position alone, the optimizer step: its settings and base LRs are
the constructor's. A run resumed with a longer ``total_steps`` or another LR therefore follows the schedule it
is configured with from the resumed step, instead of the one its checkpoint was written under.
"""

from __future__ import annotations

import math
from typing import Annotated

import annotated_types as at
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lmlab.arguments import Fraction, NonNegativeInt, PositiveInt, Probability, checked
from lmlab.errors import ArgumentError

Warmup = NonNegativeInt | Fraction  # steps, or a fraction of total_steps


def warmup_within_run(warmup_steps: int | float, total_steps: int | None) -> None:
    """Warmup as a fraction needs the run's length; warmup in steps must end before the run does."""
    if total_steps is None:
        if isinstance(warmup_steps, float):
            raise ArgumentError("warmup_steps", warmup_steps, "a fraction of the run needs {total_steps}",
                                total_steps=total_steps)
    elif isinstance(warmup_steps, int) and warmup_steps >= total_steps:
        raise ArgumentError("warmup_steps", warmup_steps, "must be less than {total_steps} (or a fraction of "
                            "the run, e.g. 0.1)", total_steps=total_steps)


def warmup_length(warmup_steps: int | float, total_steps: int | None) -> int:
    """Warmup in optimizer steps: as given, or the fraction of ``total_steps`` rounded to a step."""
    return warmup_steps if isinstance(warmup_steps, int) else round(warmup_steps * total_steps)


class MultiplierSchedule(LRScheduler):
    """Base: ``lr = base_lr * multiplier(last_epoch)``; subclasses define ``multiplier``.

    ``last_epoch`` counts optimizer steps here (0 at construction, +1 per ``step()``).
    """

    min_warmup_steps = 0  # what a warmup fraction of a short run rounds up to

    @checked(rules=warmup_within_run)
    def __init__(self, optimizer: Optimizer, warmup_steps: Warmup, total_steps: PositiveInt | None = None,
                 last_epoch: int = -1):
        self.total_steps = total_steps
        self.warmup_steps = max(self.min_warmup_steps, warmup_length(warmup_steps, total_steps))
        super().__init__(optimizer, last_epoch)

    def warmup(self, s: int) -> float:
        """Linear warmup (s+1)/W, reaching 1 at s = W-1 so the first step already moves."""
        return (s + 1) / self.warmup_steps

    def multiplier(self, s: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        m = self.multiplier(self.last_epoch)
        return [base_lr * m for base_lr in self.base_lrs]

    def state_dict(self) -> dict:
        """The position only: the settings (horizon, warmup, base LRs) stay those it was constructed with."""
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        """Move to the saved step (older checkpoints also hold settings: they are ignored) and set the LR this
        schedule gives there, over the LR the optimizer's restored state carries."""
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict.get("_step_count", self.last_epoch + 1)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


class _DecayingSchedule(MultiplierSchedule):
    """Warmup followed by a decay to ``min_lr_ratio`` that ends exactly at ``total_steps``."""

    @checked(rules=warmup_within_run)
    def __init__(self, optimizer: Optimizer, warmup_steps: Warmup, total_steps: PositiveInt,
                 min_lr_ratio: Probability = 0.0, last_epoch: int = -1):
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, warmup_steps, total_steps, last_epoch)

    def progress(self, s: int, start: float) -> float:
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

    @checked(rules=warmup_within_run)
    def __init__(self, optimizer: Optimizer, warmup_steps: Warmup, total_steps: PositiveInt,
                 decay_fraction: Annotated[float, at.Gt(0), at.Le(1)] = 0.1, min_lr_ratio: Probability = 0.0,
                 last_epoch: int = -1):
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

    def multiplier(self, s: int) -> float:
        return self.warmup(s) if s < self.warmup_steps else 1.0


def positive_warmup(warmup_steps: int | float, total_steps: int | None) -> None:
    warmup_within_run(warmup_steps, total_steps)
    if warmup_steps == 0:
        raise ArgumentError("warmup_steps", warmup_steps, "must be at least one step for inverse_sqrt (it sets "
                            "the decay scale)")


class InverseSqrt(MultiplierSchedule):
    """Warmup, then sqrt(W / (s+1)): the original Transformer schedule, continuous at s = W-1. A warmup given as
    a fraction is at least one step (W sets the decay scale), so a run of any length fits."""

    min_warmup_steps = 1

    @checked(rules=positive_warmup)
    def __init__(self, optimizer: Optimizer, warmup_steps: Warmup, total_steps: PositiveInt | None = None,
                 last_epoch: int = -1):
        super().__init__(optimizer, warmup_steps, total_steps, last_epoch)

    def multiplier(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        return math.sqrt(self.warmup_steps / max(s + 1, self.warmup_steps))
