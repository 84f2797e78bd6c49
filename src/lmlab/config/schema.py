"""Typed schemas for config nodes, chosen by each node's ``_target_``.

Why pydantic (v2) rather than dataclasses in Hydra's ConfigStore: a ConfigStore schema is bound to a
config *file* through the defaults list, so a user who points a group at another class
(``optimizer._target_=...``) or at their own keeps the old schema; here the schema follows the
``_target_`` the node ends up with, after every override. Constraints sit on the fields they guard
(``lr: Positive``), cross-field rules in a validator of the same class, and a class's own signature
gives the types of every argument a schema does not declare (and the schema of a target lmlab does
not know). Validation runs on the resolved config as plain data, before anything is built.

Errors become one :class:`~lmlab.errors.InputError` line naming the full dotted key, the value and
what is allowed (:mod:`lmlab.config.messages`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import typing
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic import ValidationInfo as _ValidationInfo

from lmlab.errors import InputError

# keys Hydra's instantiate reads itself
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")

# Field types for declared fields: strict (no "3" for 3, no true for 1), with their constraint; each
# error message says the constraint in words. Arguments typed from a signature are checked leniently.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
Positive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, ge=0, le=1)]
Beta = Annotated[float, Field(strict=True, ge=0, lt=1)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Betas = Annotated[list[Beta], Field(min_length=2, max_length=2)]

ValidationInfo = _ValidationInfo


class Schema(BaseModel):
    """A config node's fields: unknown keys refused."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # fields holding another config group's node (e.g. a callback's decoding strategies): checked as that group
    nested_groups: ClassVar[dict[str, str]] = {}
    # accept (and type-check) the target's other constructor arguments, not only the declared fields
    open_signature: ClassVar[bool] = False

    @staticmethod
    def key(info: ValidationInfo, field: str) -> str:
        """The full dotted key of ``field`` in this node, for messages of cross-field rules."""
        return f"{(info.context or {}).get('prefix', '')}{field}"


_EXPLICIT: dict[Any, type[Schema]] = {}


def schema_of(*targets):
    """Class decorator: the schema of the config nodes whose ``_target_`` is one of ``targets``."""

    def register(schema: type[Schema]) -> type[Schema]:
        for target in targets:
            _EXPLICIT[target] = schema
        return schema

    return register


def locate(path: str, key: str) -> Any:
    """The object a ``_target_`` names, found as Hydra finds it (attributes first, then submodules); an
    InputError with the closest name when it cannot be imported."""
    if not isinstance(path, str) or not path:
        raise InputError(f"{key}={path!r}: must be a dotted import path such as lmlab.optim.AdamW")
    parts = path.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ModuleNotFoundError:
        raise InputError(f"{key}={path}: no module {parts[0]!r} can be imported") from None
    for i, attr in enumerate(parts[1:], start=1):
        if not hasattr(obj, attr):
            try:
                importlib.import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError as e:
                if e.name != ".".join(parts[: i + 1]):  # the module exists but needs one that is missing
                    raise InputError(f"{key}={path}: importing it needs {e.name}, which is not installed") from None
        if not hasattr(obj, attr):
            near = difflib.get_close_matches(attr, [a for a in dir(obj) if not a.startswith("_")], 1)
            hint = f"; did you mean {'.'.join(parts[:i] + near)}?" if near else ""
            raise InputError(f"{key}={path}: {'.'.join(parts[:i])} has no {attr!r}{hint}")
        obj = getattr(obj, attr)
    return obj


def schema_for(target: Any, runtime: tuple[str, ...] = ()) -> type[BaseModel]:
    """The declared schema of ``target``, widened by its signature when open; for a target without a
    declared schema, one made from its signature (types from annotations, every argument optional).
    ``runtime``: arguments the code passes to any target of this group (not config keys)."""
    explicit = _EXPLICIT.get(target)
    if explicit is not None and not explicit.open_signature:
        return explicit
    return _signature_schema(target, explicit, runtime)


@functools.cache
def _signature_schema(target: Any, explicit: type[Schema] | None, runtime: tuple[str, ...]) -> type[BaseModel]:
    skip = {*runtime, *(explicit.model_fields if explicit else ())}
    fields, open_kwargs = {}, False
    for name, param in _parameters(target):
        if param.kind is param.VAR_KEYWORD:
            open_kwargs = True
        elif param.kind is not param.VAR_POSITIONAL and name not in skip:
            default = None if param.default is param.empty else param.default
            fields[name] = (_usable_type(param.annotation), default)
    base = type("Base", (explicit or Schema,), {"model_config": ConfigDict(extra="allow" if open_kwargs else "forbid")})
    name = getattr(target, "__qualname__", type(target).__name__)
    return create_model(f"{name}Arguments", __base__=base, **fields)


def _parameters(target: Any) -> list[tuple[str, inspect.Parameter]]:
    """Constructor (or function) parameters with their annotations resolved where possible."""
    func = target.__init__ if inspect.isclass(target) else target
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: no type check for those arguments
        hints = {}
    return [(name, p.replace(annotation=hints.get(name, p.annotation))) for name, p in signature.parameters.items()]


def _usable_type(annotation: Any) -> Any:
    """The annotation if pydantic can validate config values against it, else Any (no type check)."""
    if annotation is inspect.Parameter.empty:
        return Any
    try:
        TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:
        return Any
    return annotation


def existing_checkpoint(path: str, key: str) -> None:
    """A checkpoint file or run directory that exists (its contents are checked when it is loaded)."""
    from lmlab.checkpoint import resolve_checkpoint

    try:
        resolve_checkpoint(path, field=key)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None


def validate(schema: type[BaseModel], values: dict, prefix: str) -> BaseModel:
    """``schema`` applied to a node's values (Hydra's keys left out); errors as one InputError line."""
    from lmlab.config.messages import describe_errors

    data = {k: v for k, v in values.items() if k not in HYDRA_KEYS}
    try:
        return schema.model_validate(data, context={"prefix": prefix})
    except ValidationError as e:
        raise InputError(describe_errors(e, schema, data, prefix)) from None
