"""A config node checked by its ``_target_``, before anything is built.

The node's keys are the target's parameters, each value is checked against its annotation and then the
target's rules run (:func:`lmlab.arguments.check_arguments`): the constructor defines the option and its
checks, and this module adds only where the node sits (every error names the full key). A node whose values
are themselves nodes (the ``logger`` and ``callbacks`` groups, ``decoding=suite``) is checked child by child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmlab.arguments import check_arguments, parameters
from lmlab.errors import ArgumentError, InputError, show
from lmlab.targets import locate

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# arguments the code passes to every target of a group itself (never config keys)
RUNTIME = {
    "optimizer": ("params", "model"),  # the factory is called with the model (lmlab.optim.grouped: `model`)
    "sched": ("optimizer", "last_epoch"),
    "trainer": ("callbacks", "logger", "default_root_dir", "plugins"),
    "decoding": ("model", "target", "input_ids", "max_new_tokens", "eos_token_id", "attention_mask",
                 "pad_token_id", "generator"),
}
# a child key that holds another group's node (the decoding callback's strategies)
NESTED_GROUPS = {"strategies": "decoding"}


@dataclass
class Checked:
    """A checked node: its target and its arguments, the signature's defaults filled in."""

    target: Any
    arguments: dict = field(default_factory=dict)

    def get(self, name: str, default=None):
        return self.arguments.get(name, default)


def is_node(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def check_group(group: str, node: Any, key: str) -> Checked | dict[str, Checked] | None:
    """A group's node, or each named node of a group that holds several."""
    if node is None:
        return None
    if isinstance(node, dict) and not is_node(node) and (group in ("logger", "callbacks") or node):
        return {name: check_node(child, f"{key}.{name}", group) for name, child in node.items() if child is not None}
    return check_node(node, key, group)


def check_node(node: Any, key: str, group: str = "", narrowed: Any = None) -> Checked:
    """``node`` under ``key`` against its target (and ``narrowed``: a function whose annotated parameters
    are stricter ranges lmlab needs of a target it does not own)."""
    if not is_node(node):
        raise InputError(f"{key}={show(node)}: must be a config node with a _target_ (a class or function to build)")
    try:
        target = locate(node["_target_"])
    except ArgumentError as e:
        raise e.within(key) from None
    values, nested = {}, []
    for name, child in node.items():
        if name in HYDRA_KEYS:
            continue
        if name in NESTED_GROUPS:
            check_group(NESTED_GROUPS[name], child, f"{key}.{name}")
            nested.append(name)
        elif is_node(child):
            check_node(child, f"{key}.{name}")
            nested.append(name)  # built by Hydra before the call: an object, not a value of the config
        else:
            values[name] = child
    try:
        if narrowed is not None:
            check_arguments(narrowed, {k: v for k, v in values.items() if k in parameters(narrowed)})
        check_arguments(target, values, runtime=(*RUNTIME.get(group, ()), *nested))
    except ArgumentError as e:
        raise e.within(key) from None
    defaults = {name: p.default for name, p in parameters(target).items() if p.default is not p.empty}
    return Checked(target, {**defaults, **values})


def check_options(options: Any, values: dict, key: str = "") -> None:
    """A config's own keys (conf/train.yaml's ``samples``...) against the function that states them."""
    try:
        check_arguments(options, values)
    except ArgumentError as e:
        raise (e.within(key) if key else e) from None
