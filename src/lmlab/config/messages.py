"""pydantic validation errors as one line: ``optimizer.lr=-1: must be a number > 0``.

Every message names the full dotted key (group prefix included), the value as a user would type it
and what is allowed, read from the field's type and constraints; an unknown key gets the closest
allowed key, if one is close.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

MAX_ERRORS_SHOWN = 3
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


def describe_errors(error: ValidationError, schema: type[BaseModel], data: dict, prefix: str) -> str:
    """One line for every problem pydantic found in one node (the first few, then a count)."""
    lines, seen = [], set()
    for item in error.errors(include_url=False):
        key, leaf, field, value = _locate(item, schema, data, prefix)
        if key in seen:  # a union reports each branch; one message per key is enough
            continue
        seen.add(key)
        lines.append(_describe(item, leaf, field, key, value))
    more = f" (and {len(lines) - MAX_ERRORS_SHOWN} more)" if len(lines) > MAX_ERRORS_SHOWN else ""
    return "; ".join(lines[:MAX_ERRORS_SHOWN]) + more


def _locate(item: dict, schema: type[BaseModel], data, prefix: str):
    """(full key, schema holding the field, field name, value) of an error, through nested schemas."""
    path = [str(part) for part in item["loc"]]
    for depth, part in enumerate(path):
        info = schema.model_fields.get(part)
        nested = getattr(info, "annotation", None)
        if depth + 1 < len(path) and isinstance(nested, type) and issubclass(nested, BaseModel):
            schema, data, prefix = nested, (data or {}).get(part, {}), f"{prefix}{part}."
            continue
        value = data.get(part, item["input"]) if isinstance(data, dict) else item["input"]
        return prefix + part, schema, part, value
    return prefix.rstrip("."), schema, "", item["input"]


def _describe(item: dict, schema: type[BaseModel], field: str, key: str, value) -> str:
    if item["type"] == "value_error":  # a cross-field rule: its message is complete
        return str(item["ctx"]["error"])
    if item["type"] == "missing":
        return f"{key} is required: {_allowed(schema.model_fields[field])}"
    if item["type"] == "extra_forbidden":
        return f"{key}={show(item['input'])}: {unknown_key_hint(field, sorted(schema.model_fields), key[:-len(field)])}"
    info = schema.model_fields.get(field)
    return f"{key}={show(value)}: must be {_allowed(info) if info else item['msg']}"


def unknown_key_hint(field: str, allowed: list[str], prefix: str) -> str:
    """'unknown key; did you mean optimizer.lr?', or the allowed keys when none is close."""
    near = difflib.get_close_matches(field, allowed, n=1, cutoff=0.6)
    if near:
        return f"unknown key; did you mean {prefix}{near[0]}?"
    listed = ", ".join(allowed[:MAX_KEYS_LISTED])
    if len(allowed) > MAX_KEYS_LISTED:
        listed += f", ... ({len(allowed)} keys)"
    return f"unknown key; allowed: {listed or 'none'}"


def _allowed(info: FieldInfo) -> str:
    return describe_type(info.annotation, info.metadata)


def describe_type(annotation: Any, metadata: list | tuple = ()) -> str:
    """'a number > 0', 'an integer >= 1', 'one of a, b', 'null or a number in [0, 1)' ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe_type(args[0], [*metadata, *_constraints(args[1:])])
    if origin in (Union, types.UnionType):
        parts = [describe_type(a, metadata) for a in args if a is not type(None)]
        return " or ".join(["null"] * (type(None) in args) + parts)
    if origin is Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin in (list, tuple):
        length = _length(metadata)
        each = f", each {describe_type(args[0])}" if args else ""
        return f"a list of {length}values{each}"
    if origin is dict:
        return "a mapping"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", Any: "any value",
             type(None): "null"}
    base = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return base + _range(metadata)


def _constraints(extra: tuple) -> list:
    out = []
    for item in extra:
        out += list(getattr(item, "metadata", [])) if isinstance(item, FieldInfo) else [item]
    return out


def _range(metadata) -> str:
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


def _length(metadata) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
    if low is not None and low == high:
        return f"{low} "
    return ""
