"""The object a dotted path names (a config's ``_target_``, ``grouped``'s ``cls``), found as Hydra finds it."""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import Any

from lmlab.errors import ArgumentError


def locate(path: str, name: str = "_target_") -> Any:
    """Attributes first, then submodules; an ArgumentError (for the argument ``name``) with the closest name
    when it cannot be imported."""
    if not isinstance(path, str) or not path:
        raise ArgumentError(name, path, "must be a dotted import path such as lmlab.optim.AdamW")
    parts = path.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except ModuleNotFoundError:
        raise ArgumentError(name, path, f"no module {parts[0]!r} can be imported") from None
    for i, attr in enumerate(parts[1:], start=1):
        if not hasattr(obj, attr):
            try:
                importlib.import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError as e:
                if e.name != ".".join(parts[: i + 1]):  # the module exists but needs one that is missing
                    raise ArgumentError(name, path, f"importing it needs {e.name}, which is not installed") from None
        if not hasattr(obj, attr):
            near = difflib.get_close_matches(attr, [a for a in dir(obj) if not a.startswith("_")], 1)
            hint = f"; did you mean {'.'.join(parts[:i] + near)}?" if near else ""
            raise ArgumentError(name, path, f"{'.'.join(parts[:i])} has no {attr!r}{hint}")
        obj = getattr(obj, attr)
    return obj


def build(node: Any) -> Any:
    """A config node saved as plain data (a run's resolved config.yaml) as the object it describes, without
    Hydra: a mapping with ``_target_`` is that callable called with its other keys, each built first (unless
    ``_recursive_: false``), or with ``_partial_: true`` a ``functools.partial`` of it; other mappings and
    lists are built item by item."""
    if isinstance(node, list | tuple):
        return [build(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return {key: build(value) for key, value in node.items()}
    arguments = {key: value for key, value in node.items() if not key.startswith("_")}
    if node.get("_recursive_", True):
        arguments = {key: build(value) for key, value in arguments.items()}
    args = [build(a) for a in node.get("_args_", [])]
    target = locate(node["_target_"])
    return functools.partial(target, *args, **arguments) if node.get("_partial_") else target(*args, **arguments)
