"""Activation functions by name (placeholder registry; hand-written autograd versions follow)."""

import torch.nn as nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def get_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
