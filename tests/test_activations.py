"""Hand-written activation derivatives: gradcheck, torch's own derivatives, bf16, torch.compile."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.models.activations import FUNCTIONS, Activation

TORCH_REFERENCE = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def _inputs(dtype, n=257):
    x = torch.linspace(-8, 8, n, dtype=dtype)
    return x[x.abs() > 1e-3]  # keep away from relu's kink, where the derivative is not defined


@pytest.mark.parametrize("name", FUNCTIONS)
def test_backward_passes_gradcheck_in_float64(name):
    x = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    x = torch.where(x.abs() < 1e-3, 0.5, x).requires_grad_()
    assert torch.autograd.gradcheck(FUNCTIONS[name], (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(FUNCTIONS[name], (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_value_and_gradient_match_torch(name):
    x = _inputs(torch.float64).requires_grad_()
    y = FUNCTIONS[name](x)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x_ref = x.detach().clone().requires_grad_()
    y_ref = TORCH_REFERENCE[name](x_ref)
    (grad_ref,) = torch.autograd.grad(y_ref, x_ref, torch.ones_like(y_ref))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bf16_gradient_is_computed_in_float32(name):
    x = _inputs(torch.float32).bfloat16().requires_grad_()
    y = FUNCTIONS[name](x)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert y.dtype == grad.dtype == torch.bfloat16
    x32 = x.detach().float().requires_grad_()
    (grad32,) = torch.autograd.grad(TORCH_REFERENCE[name](x32).sum(), x32)
    # the float32 derivative at the bf16 input, rounded once to bf16 (relative step 2^-8)
    torch.testing.assert_close(grad.float(), grad32, rtol=2**-8, atol=1e-5)


def test_autocast_bf16_mlp():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), Activation("gelu"), torch.nn.Linear(16, 8))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in mlp.parameters())


@pytest.mark.parametrize("name", ["gelu", "silu", "tanh"])
def test_compiles_without_graph_breaks(name):
    """fullgraph=True raises on any graph break; aot_eager runs the traced forward and backward graphs."""
    act = Activation(name)
    compiled = torch.compile(lambda x: act(x * 2.0).sum(), fullgraph=True, backend="aot_eager")
    x = torch.randn(16, requires_grad=True)
    (grad,) = torch.autograd.grad(compiled(x), x)
    x_ref = x.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(act(x_ref * 2.0).sum(), x_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_registry_names_and_bad_name():
    assert list(FUNCTIONS) == ["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"]
    assert "gelu_tanh" in repr(Activation("gelu_tanh"))
    with pytest.raises(ValueError, match=r"^name='swish': must be one of 'relu', 'gelu', 'gelu_tanh'"):
        Activation("swish")


def gelu_tanh_derivative(x):
    c = (2 / torch.pi) ** 0.5
    t = torch.tanh(c * x * (1 + 0.044715 * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


WRITTEN_OUT = {  # the analytic derivatives of the module docstring, one op at a time (float64)
    "gelu": lambda x: 0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5,
    "gelu_tanh": gelu_tanh_derivative,
    "silu": lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
    "sigmoid": lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
    "tanh": lambda x: 1 - torch.tanh(x) ** 2,
    "relu": lambda x: (x > 0).double(),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_derivative_is_the_written_out_formula(name):
    x = _inputs(torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(FUNCTIONS[name](x).sum(), x)
    torch.testing.assert_close(grad, WRITTEN_OUT[name](x.detach()), rtol=1e-12, atol=1e-14)
