"""Names of a model's blocks, so per-layer telemetry reads `blocks.3`, not a parameter path."""

from __future__ import annotations


def layer_name(param_name: str) -> str:
    """Block of a parameter: `model.blocks.3.attn.qkv.weight` -> `blocks.3`, `model.wte.weight` -> `wte`."""
    parts = param_name.removeprefix("model.").split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or parts[0]


def layer_order(name: str) -> list:
    """Sort key that puts `blocks.10` after `blocks.9`."""
    return [int(t) if t.isdigit() else t for t in name.split(".")]
