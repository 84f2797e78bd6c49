"""What watching a run costs: the wall time each callback's hooks take, for its share of the run.

Lightning calls every callback hook inside ``trainer.profiler.profile("[Callback]<state_key>.<hook>")``.
:class:`CallbackClock` takes the trainer's profiler's place and passes every call on to it, adding up per
callback class the host time between start and stop of its outermost hooks (a hook that runs inside another
callback's, e.g. ``on_save_checkpoint`` inside ModelCheckpoint's save, counts for the outer one only). It reads
the host clock only, with no device sync: on CUDA a hook's kernels count where the host waits for them.
"""

from __future__ import annotations

import time
from collections import defaultdict

from lightning.pytorch.profilers import Profiler

PREFIX = "[Callback]"


class CallbackClock(Profiler):
    """Seconds per callback class (``seconds``); the wrapped profiler still profiles everything."""

    def __init__(self, inner: Profiler):
        super().__init__()
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: str | None = None  # the outermost callback hook running now
        self._started = 0.0

    @classmethod
    def install(cls, trainer) -> CallbackClock:
        """The trainer's clock, put in place of its profiler unless it is there already."""
        if not isinstance(trainer.profiler, cls):
            trainer.profiler = cls(trainer.profiler)
        return trainer.profiler

    def start(self, action_name: str) -> None:
        if self._open is None and action_name.startswith(PREFIX):
            self._open, self._started = action_name, time.perf_counter()
        self.inner.start(action_name)

    def stop(self, action_name: str) -> None:
        self.inner.stop(action_name)
        if action_name == self._open:
            self.seconds[callback_name(action_name)] += time.perf_counter() - self._started
            self._open = None

    def setup(self, *args, **kwargs) -> None:
        self.inner.setup(*args, **kwargs)

    def teardown(self, *args, **kwargs) -> None:
        self.inner.teardown(*args, **kwargs)

    def describe(self) -> None:
        self.inner.describe()

    def summary(self) -> str:
        return self.inner.summary()


def callback_name(action_name: str) -> str:
    """``[Callback]ModelCheckpoint{'monitor': ...}.on_validation_end`` -> ``ModelCheckpoint``."""
    state_key = action_name[len(PREFIX):].rsplit(".", 1)[0]
    return state_key.split("{", 1)[0]
