"""What an argument may be, said once: in the signature of the constructor (or function) that takes it.

    class AdamW(Adam):
        @checked
        def __init__(self, params, lr: Positive = 1e-3, betas: Betas = (0.9, 0.95), ...): ...

A parameter's annotation is its type and range, its default is the default. ``@checked`` makes every
call check the arguments against those annotations, then run the target's ``rules``: a function of some
of its parameters that checks what joins several of them and raises :class:`ArgumentError`.

The config layer (:mod:`lmlab.config`) runs the same checks on a config node before anything is built
(:func:`check_arguments`) and puts the node's key in front of every name, so library code names only
its own parameters: ``lr=-1: must be a number > 0`` here is ``optimizer.lr=-1: must be a number > 0``
on the command line.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any, Literal, Union

import annotated_types as at

from lmlab.errors import InputError

# ---- what an argument may be ------------------------------------------------------------------
# Every float must also be finite; ints are not bools; a string is not a number.
Positive = Annotated[float, at.Gt(0)]
NonNegative = Annotated[float, at.Ge(0)]
Probability = Annotated[float, at.Ge(0), at.Le(1)]
Fraction = Annotated[float, at.Gt(0), at.Lt(1)]
Beta = Annotated[float, at.Ge(0), at.Lt(1)]
PositiveInt = Annotated[int, at.Ge(1)]
NonNegativeInt = Annotated[int, at.Ge(0)]
Betas = Annotated[Sequence[Beta], at.Len(2, 2)]

MAX_KEYS_LISTED = 12


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
        return ArgumentError(self.name, self.value, self.rule, f"{key}.{self.prefix}" if key else self.prefix,
                             **self.others)

    def __reduce__(self):  # picklable across processes (ddp_spawn, multirun launchers)
        return _rebuild, (self.name, self.value, self.rule, self.prefix, self.others)


def _rebuild(name, value, rule, prefix, others) -> ArgumentError:
    return ArgumentError(name, value, rule, prefix, **others)


def unknown_key(name: str, value: Any, allowed: Collection[str]) -> ArgumentError:
    """'unknown key; did you mean lr?', or the allowed keys when none is close."""
    near = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
    if near:
        return ArgumentError(name, value, "unknown key; did you mean {" + near[0] + "}?", **{near[0]: ...})
    listed = ", ".join(sorted(allowed)[:MAX_KEYS_LISTED])
    if len(allowed) > MAX_KEYS_LISTED:
        listed += f", ... ({len(allowed)} keys)"
    return ArgumentError(name, value, f"unknown key; allowed: {listed or 'none'}")


# ---- the checks -------------------------------------------------------------------------------


def checked(func: Callable | None = None, *, rules: Callable[..., None] | None = None):
    """Decorator: every call checks its arguments against ``func``'s annotations, then ``rules``
    (called with the arguments it names, defaults included), before ``func`` runs."""

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            if "self" in values:
                del values["self"]
            for param in signature.parameters.values():  # **kwargs: checked by whoever receives them
                if param.kind is param.VAR_KEYWORD:
                    values.pop(param.name, None)
            check_arguments(call, values)
            return func(*args, **kwargs)

        call.argument_rules = rules
        return call

    return decorate(func) if func is not None else decorate


@functools.cache
def parameters(target: Any) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a function or class (``self`` left out, ``__signature__`` honoured),
    each annotation resolved on its own (one that cannot be, e.g. a type imported only for type checkers,
    is left empty: not checked)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return {}
    function = inspect.unwrap(target.__init__ if inspect.isclass(target) else target)
    namespace = getattr(function, "__globals__", {})
    return {name: p.replace(annotation=_resolve(p.annotation, namespace))
            for name, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL and name != "self"}


def _resolve(annotation: Any, namespace: dict) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)  # noqa: S307 (an annotation of our own source, as typing does)
    except Exception:
        return inspect.Parameter.empty


def rules_of(target: Any) -> Callable[..., None] | None:
    """The ``rules`` a target declares (``@checked(rules=...)`` on it or its ``__init__``)."""
    return getattr(target, "argument_rules", None) or getattr(getattr(target, "__init__", None), "argument_rules", None)


def run_rules(target: Any, values: dict) -> None:
    """The target's rules, called with the arguments they name (those not given take their defaults)."""
    rules = rules_of(target)
    if rules is None:
        return
    defaults = {name: p.default for name, p in parameters(target).items() if p.default is not p.empty}
    wanted = parameters(rules)
    rules(**{name: values.get(name, defaults.get(name)) for name in wanted if name in values or name in defaults})


def check_arguments(target: Any, values: dict, runtime: Collection[str] = ()) -> None:
    """``values`` (keyword arguments) for ``target``: unknown and missing ones, each against its annotation,
    then the target's rules; an :class:`ArgumentError` naming the first problem. ``runtime``: arguments
    the caller passes later itself (an optimizer's parameters), neither required nor allowed here."""
    params = parameters(target)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {name for name, p in params.items() if p.kind is not p.VAR_KEYWORD and name not in runtime}
    for name, value in values.items():
        if name not in named and not takes_any:
            raise unknown_key(name, value, named)
    for name in named:
        param = params[name]
        if param.default is param.empty and name not in values:
            raise ArgumentError(name, None, f"is required: {describe(param.annotation)}")
    validator = _validator(target, tuple(sorted(runtime)))
    if validator is not None:
        from pydantic import ValidationError

        checked_values = {k: v for k, v in values.items() if k in validator.model_fields}
        try:
            validator.model_validate(checked_values)
        except ValidationError as e:
            item = e.errors(include_url=False)[0]
            name = str(item["loc"][0])
            raise ArgumentError(name, values[name], f"must be {describe(params[name].annotation)}") from None
    run_rules(target, values)


@functools.cache
def _validator(target: Any, runtime: tuple[str, ...]):
    """A pydantic model of the target's parameters whose annotations say what a config value may be
    (numbers, strings, lists, literals...); strict: no "3" for 3, no true for 1; floats finite."""
    from pydantic import ConfigDict, create_model

    fields = {}
    for name, param in parameters(target).items():
        annotation = config_type(param.annotation)
        if name not in runtime and param.kind is not param.VAR_KEYWORD and annotation is not None:
            fields[name] = (annotation, None)
    if not fields:
        return None
    config = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)
    return create_model(f"{getattr(target, '__qualname__', 'target')}Arguments", __config__=config, **fields)


CONFIG_BASES = (float, int, bool, str, type(None), list, tuple, dict, Sequence, collections.abc.Sequence)


def config_type(annotation: Any) -> Any:
    """The part of an annotation a config value can have (a number, a string, a list of numbers...),
    or None: ``float | Tensor`` -> ``float``; ``nn.Module`` -> None (not checked here)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if origin is Annotated:
        base = config_type(args[0])
        return None if base is None else Annotated[(base, *args[1:])]
    if origin in (Union, types.UnionType):
        members = [config_type(a) for a in args]
        members = [m for m in members if m is not None]
        return Union[tuple(members)] if members else None  # noqa: UP007 (a runtime union of computed members)
    if origin is Literal:
        return annotation
    if origin in (list, tuple, dict, Sequence, collections.abc.Sequence):
        return annotation if all(a is Ellipsis or config_type(a) is not None for a in args) else None
    return annotation if annotation in CONFIG_BASES else None


# ---- what an annotation allows, in words ---------------------------------------------------------


def describe(annotation: Any, metadata: Sequence = ()) -> str:
    """'a number > 0', 'an integer >= 1', 'one of 'a', 'b'', 'null or a number in [0, 1)' ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe(args[0], [*metadata, *args[1:]])
    if origin in (Union, types.UnionType):
        parts = [describe(a, metadata) for a in args if a is not type(None) and config_type(a) is not None]
        return " or ".join(["null"] * (type(None) in args) + parts)
    if origin is Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        length = _length(metadata)
        each = f", each {describe(args[0])}" if args and args[0] is not Ellipsis else ""
        return f"a list of {length}values{each}"
    if origin is dict or annotation is dict:
        return "a mapping"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any value"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))) + _range(metadata)


def _range(metadata: Sequence) -> str:
    low = next(((m.gt, "(") for m in metadata if isinstance(m, at.Gt)), None) or next(
        ((m.ge, "[") for m in metadata if isinstance(m, at.Ge)), None)
    high = next(((m.lt, ")") for m in metadata if isinstance(m, at.Lt)), None) or next(
        ((m.le, "]") for m in metadata if isinstance(m, at.Le)), None)
    if low and high:
        return f" in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low:
        return f" {'>' if low[1] == '(' else '>='} {low[0]}"
    if high:
        return f" {'<' if high[1] == ')' else '<='} {high[0]}"
    return ""


def _length(metadata: Sequence) -> str:
    length = next((m for m in metadata if isinstance(m, at.Len)), None)
    if length is not None and length.min_length == length.max_length:
        return f"{length.min_length} "
    return ""
