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

from lmlab.errors import ArgumentError, show

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
        receiver = _receiver(signature)

        @functools.wraps(func)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            if receiver is not None:
                values.pop(receiver)
            for param in signature.parameters.values():
                if param.kind is param.VAR_KEYWORD:  # **kwargs: checked as the keywords they are
                    values.update(values.pop(param.name, {}))
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
    receiver = _receiver(signature)
    params = {name: p.replace(annotation=_resolve(p.annotation, namespace))
              for name, p in signature.parameters.items() if p.kind is not p.VAR_POSITIONAL and name != receiver}
    return _with_inherited(target, params) if inspect.isclass(target) else params


def _with_inherited(cls: type, params: dict[str, inspect.Parameter]) -> dict[str, inspect.Parameter]:
    """A ``@checked`` ``__init__(self, own..., **kwargs)`` hands ``kwargs`` to ``super().__init__`` (a rule of
    this code base, tests/test_layout.py), so the parent's parameters replace ``**kwargs``: an unknown key is
    refused by the subclass too. Other ``**kwargs`` (other libraries') go anywhere, and stay open."""
    init = vars(cls).get("__init__")
    if not hasattr(init, "argument_rules") or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return params
    parent = next(base for base in cls.__mro__[1:] if "__init__" in vars(base))
    own = {name: p for name, p in params.items() if p.kind is not p.VAR_KEYWORD}
    return {**own, **{name: p for name, p in parameters(parent).items() if name not in own}}


def _receiver(signature: inspect.Signature) -> str | None:
    """The first parameter of a method's function (what the method is bound to: not an argument)."""
    first = next(iter(signature.parameters), None)
    return first if first in ("self", "cls") else None


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
    arguments = {name: values.get(name, defaults.get(name)) for name in wanted if name in values or name in defaults}
    if any(p.kind is p.VAR_KEYWORD for p in wanted.values()):  # rules about any keyword the target takes
        arguments |= {name: value for name, value in values.items() if name not in wanted}
    rules(**arguments)


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
    check_annotations(target, values, runtime)
    run_rules(target, values)


def check_annotations(target: Any, values: dict, runtime: Collection[str] = ()) -> None:
    """Each value against its parameter's annotation (no rules): an ArgumentError naming the first bad one."""
    validator = _validator(target, tuple(sorted(runtime)))
    if validator is None:
        return
    from pydantic import ValidationError

    try:
        validator.model_validate({k: _plain(v) for k, v in values.items() if k in validator.model_fields})
    except ValidationError as e:
        name = str(e.errors(include_url=False)[0]["loc"][0])
        annotation = parameters(target)[name].annotation
        raise ArgumentError(name, values[name], f"must be {describe(checkable(annotation))}") from None


def _plain(value: Any) -> Any:
    """Lists and dicts as Python's own (a config's ListConfig and DictConfig are sequences and mappings too)."""
    if isinstance(value, collections.abc.Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, collections.abc.Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _validator(target: Any, runtime: tuple[str, ...]):
    """A pydantic model of the target's parameters whose annotations it can check; strict (no "3" for 3, no
    true for 1), floats finite, other classes by isinstance."""
    from pydantic import ConfigDict, TypeAdapter, create_model

    config = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)
    fields = {}
    for name, param in parameters(target).items():
        annotation = checkable(param.annotation)
        if name in runtime or param.kind is param.VAR_KEYWORD or annotation is None:
            continue
        try:
            TypeAdapter(annotation, config=config)
        except Exception:  # a type pydantic cannot check: left to the target itself
            continue
        fields[name] = (annotation, None)
    if not fields:
        return None
    return create_model(f"{getattr(target, '__qualname__', 'target')}Arguments", __config__=config, **fields)


CONFIG_TYPES = (float, int, bool, str, type(None))
SEQUENCES = (list, tuple, Sequence, collections.abc.Sequence)


def checkable(annotation: Any) -> Any:
    """The annotation, or None where it says nothing checkable (empty, Any, or a union with such a member)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str | typing.TypeVar):
        return None
    if origin is Annotated:
        base = checkable(args[0])
        return None if base is None else Annotated[(base, *args[1:])]
    if origin is tuple and args:  # a config gives lists: a tuple of n values is a list of n values
        each = args[0] if args[-1] is Ellipsis else Union[tuple(args)]  # noqa: UP007 (a computed union)
        length = () if args[-1] is Ellipsis else (at.Len(len(args), len(args)),)
        return checkable(Annotated[(Sequence[each], *length)]) if length else checkable(Sequence[each])
    if origin in (Union, types.UnionType, *SEQUENCES, dict):
        return annotation if all(a is Ellipsis or checkable(a) is not None for a in args) else None
    if origin in (Literal, type) or inspect.isclass(annotation):
        return annotation
    return None


def config_value_type(annotation: Any) -> bool:
    """Whether a config file can give a value of this type (numbers, strings, lists...: not a model)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return config_value_type(args[0])
    if origin in (Union, types.UnionType):
        return any(config_value_type(a) for a in args)
    return origin in (Literal, dict, *SEQUENCES) or annotation in (*CONFIG_TYPES, dict, list)


# ---- what an annotation allows, in words ---------------------------------------------------------


def describe(annotation: Any, metadata: Sequence = ()) -> str:
    """'a number > 0', 'an integer >= 1', 'one of 'a', 'b'', 'null or a number in [0, 1)' ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe(args[0], [*metadata, *args[1:]])
    if origin in (Union, types.UnionType):
        parts = [describe(a, metadata) for a in args if a is not type(None) and config_value_type(a)]
        return " or ".join(["null"] * (type(None) in args) + parts)
    if origin is Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        each = f", each {describe(args[0])}" if args and args[0] is not Ellipsis else ""
        return f"{_length(metadata)}values{each}"
    if origin is dict or annotation is dict:
        return "a mapping"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any value"
    if annotation in names:
        return names[annotation] + _range(metadata)
    return f"a {getattr(annotation, '__name__', annotation)}" + _range(metadata)


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
    """'a list of 2 ', 'a non-empty list of ' or 'a list of '."""
    low = next((m.min_length for m in metadata if isinstance(m, at.Len | at.MinLen)), 0)
    high = next((m.max_length for m in metadata if isinstance(m, at.Len | at.MaxLen)), None)
    if low == high:
        return f"a list of {low} "
    return "a non-empty list of " if low else "a list of "
