"""Activation functions with hand-written derivatives (the forward/backward pass of each, made explicit).

Each is a ``torch.autograd.Function``: the forward calls torch's single fused kernel for the value, the
backward is the analytic derivative below, not a nested autograd call (``.backward()`` on a tensor inside
a backward would need a graph the Function does not keep): written out for relu, sigmoid, tanh and silu,
torch's fused derivative kernel for gelu and gelu_tanh (the formula in one pass, double-differentiable;
the tests hold it to the written-out formula).
Derivatives are computed in float32 for bf16/fp16 inputs, from the saved input. The Functions use
``setup_context``, so ``torch.compile`` traces them without graph breaks.

    relu(x)      = max(x, 0)                     relu'(x)      = 1[x > 0]
    sigmoid(x)   = 1 / (1 + e^-x)                sigmoid'(x)   = s (1 - s)
    tanh(x)                                      tanh'(x)      = 1 - t^2
    gelu(x)      = x Phi(x)                      gelu'(x)      = Phi(x) + x phi(x)
    gelu_tanh(x) = x/2 (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
                                                 gelu_tanh'(x) = (1 + t)/2 + x/2 (1 - t^2) u'(x)
    silu(x)      = x sigmoid(x)                  silu'(x)      = s (1 + x (1 - s))
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import checked
from lmlab.numerics import at_least_float32


class _Elementwise(torch.autograd.Function):
    """Saves the input: the derivative is recomputed from it in float32, also when the input is bf16
    (a bf16 output such as sigmoid's would round s(1 - s) to 0 near saturation)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])


class ReLUFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.where(x > 0, grad, 0.0)


class SigmoidFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        s = torch.sigmoid(at_least_float32(ctx.saved_tensors[0]))
        return (grad * s * (1.0 - s)).to(grad.dtype)


class TanhFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        t = torch.tanh(at_least_float32(ctx.saved_tensors[0]))
        return (grad * (1.0 - t * t)).to(grad.dtype)


class GELUFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        # Phi(x) + x phi(x), in torch's fused kernel: one pass instead of a dozen (a tenth of a small GPT's
        # training step on CPU, benchmarks/recipe.py); double-differentiable, equal to the formula (tests)
        x = at_least_float32(ctx.saved_tensors[0])
        return torch.ops.aten.gelu_backward(grad.to(x.dtype), x).to(grad.dtype)


class GELUTanhFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def backward(ctx, grad):
        # (1 + t)/2 + x/2 (1 - t^2) u'(x), in torch's fused kernel (as GELUFunction)
        x = at_least_float32(ctx.saved_tensors[0])
        return torch.ops.aten.gelu_backward(grad.to(x.dtype), x, approximate="tanh").to(grad.dtype)


class SiLUFunction(_Elementwise):
    @staticmethod
    def forward(x):
        return F.silu(x)

    @staticmethod
    def backward(ctx, grad):  # written out: torch's fused silu_backward has no derivative of its own
        x = at_least_float32(ctx.saved_tensors[0])
        s = torch.sigmoid(x)
        return (grad * s * (1.0 + x * (1.0 - s))).to(grad.dtype)


relu = ReLUFunction.apply
sigmoid = SigmoidFunction.apply
tanh = TanhFunction.apply
gelu = GELUFunction.apply
gelu_tanh = GELUTanhFunction.apply
silu = SiLUFunction.apply

FUNCTIONS = {
    "relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu, "sigmoid": sigmoid, "tanh": tanh,
}  # fmt: skip
ActivationName = Literal[tuple(FUNCTIONS)]


class Activation(nn.Module):
    """One of ``FUNCTIONS`` as a module, so a model can hold it and print its name."""

    @checked
    def __init__(self, name: ActivationName):
        super().__init__()
        self.name = name
        self.fn = FUNCTIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
