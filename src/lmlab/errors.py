"""The errors a user can fix: bad config values, unusable files, unsafe or broken checkpoints.

The command-line entry points print an ``InputError`` as one line (no traceback; set
``HYDRA_FULL_ERROR=1`` for it) and exit with status 2. Anything else is a bug and keeps its traceback.
They subclass ``ValueError`` so plain-PyTorch callers can keep catching ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """A mistake in the user's input; the message names the field (or file), the value and what is allowed."""


def show(value: Any) -> str:
    """A value as written on the command line: null, true, 3e-4, 'text', [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


class ArgumentError(InputError):
    """A bad argument, named by its parameter: ``name=value: rule``.

    ``rule`` may name other arguments as ``{other}``, given in ``others`` with their values (shown as
    ``other=value``, or as the bare name when the value is ``...``). ``name=""`` is a problem of the
    arguments together. Whoever passed the arguments on adds where they came from with :meth:`within`:
    ``ArgumentError("lr", -1, "must be > 0").within("optimizer")`` reads ``optimizer.lr=-1: must be > 0``.
    """

    def __init__(self, name: str, value: Any, rule: str, prefix: str = "", **others: Any):
        self.name, self.value, self.rule, self.prefix, self.others = name, value, rule, prefix, others
        super().__init__(self.message())

    def message(self) -> str:
        shown = {k: self.prefix + k + ("" if v is ... else f"={show(v)}") for k, v in self.others.items()}
        rule = self.rule.format(**shown)
        if not self.name:
            return f"{self.prefix.rstrip('.')}: {rule}" if self.prefix else rule
        return f"{self.prefix}{self.name}={show(self.value)}: {rule}"

    def within(self, key: str) -> ArgumentError:
        """The same error, its names under ``key`` (a config key or an argument holding the object)."""
        return type(self)(self.name, self.value, self.rule, f"{key}.{self.prefix}" if key else self.prefix,
                          **self.others)

    def renamed(self, names: dict[str, str]) -> ArgumentError:
        """The same error, its arguments named as the caller calls them (``{"mode": "--mode"}``)."""
        others = {names.get(k, k): v for k, v in self.others.items()}
        rule = self.rule.format(**{k: "{" + names.get(k, k) + "}" for k in self.others})
        return type(self)(names.get(self.name, self.name), self.value, rule, self.prefix, **others)

    def __reduce__(self):  # picklable across processes (ddp_spawn, multirun launchers)
        return _rebuild, (type(self), self.name, self.value, self.rule, self.prefix, self.others)


def _rebuild(cls, name, value, rule, prefix, others) -> ArgumentError:
    return cls(name, value, rule, prefix, **others)


class CheckpointError(ArgumentError):
    """A checkpoint that cannot be loaded safely: missing, not a checkpoint, truncated, corrupt, or needing
    pickled code. Named by the argument that gave its path."""

    def __init__(self, name: str, path: str | Path, rule: str, prefix: str = "", **others: Any):
        super().__init__(name, Path(path), rule, prefix, **others)


def first_line(error: BaseException) -> str:
    """``ErrorType: first line of its message``: how a failure is named in one line (logs, status files)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def under(key: str) -> Iterator[None]:
    """ArgumentErrors raised inside name their arguments under ``key`` (the config node they came from)."""
    try:
        yield
    except ArgumentError as e:
        raise e.within(key) from None
