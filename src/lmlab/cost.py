"""FLOPs, peak FLOP/s, MFU and cost projections: the units behind the `perf/` and `cost/` metrics.

Training FLOPs per token (PaLM, appendix B; the convention of nanoGPT and of published MFU figures)::

    6 * N  +  12 * n_layer * d_attn * T

- ``N`` counts every matmul weight once: all parameters minus pure lookup tables (learned
  positions, and the input embedding when it is not tied to the LM head). A tied embedding is
  counted once, as the LM head. That is ``model.num_params(non_embedding=True)`` of lmlab models.
  The 6 is 2 FLOPs per multiply-add in the forward pass plus twice that in the backward pass.
- The attention term is the two parameter-free matmuls (Q·Kᵀ and A·V: 2 x 2·T·d_attn FLOPs per
  token and layer in the forward pass, x3 with the backward pass) at the actual sequence length
  ``T`` of the batches, counted once over the full T x T score matrix (no causal halving, as in
  published MFU numbers). ``d_attn = n_head * head_dim``: query heads, so grouped-query attention
  does not change it.

A "device-hour" is one accelerator busy for an hour; ``tokens_per_s`` is for all devices together.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import PositiveInt
from lmlab.devices import synchronize
from lmlab.errors import ArgumentError

# Dense (no 2:4 sparsity) tensor-core peaks per device, from NVIDIA datasheets and architecture
# whitepapers. Matched as substrings of the lower-cased device name, most specific first.
# "tf32" is float32 matmuls with torch.set_float32_matmul_precision("high"/"medium").
_H100_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12, "fp64": 66.9e12}
_NVL = {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12, "fp64": 60e12}
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 nvl", _NVL),
    ("h200 nvl", _NVL),
    ("h100 pcie", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12, "fp64": 51.2e12}),
    ("h100", _H100_SXM),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("h200", _H100_SXM),  # also GH200
    ("h800", _H100_SXM),
    ("a100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "fp64": 19.5e12}),
    ("a10g", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    ("a10", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    ("l40s", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("l40", {"bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12}),
    ("l4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("rtx 4090", {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    ("rtx 3090", {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12}),
    ("v100", {"fp16": 125e12, "fp32": 15.7e12, "fp64": 7.8e12}),
    ("t4", {"fp16": 65e12, "fp32": 8.1e12}),
)

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}
_PRECISIONS = {
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "bf16": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
    "16": torch.float16,
    "32-true": torch.float32,
    "32": torch.float32,
    "64-true": torch.float64,
    "64": torch.float64,
}


@dataclass(frozen=True)
class ModelShape:
    n_params: int  # every parameter once (the "N" of ~20 tokens per parameter)
    n_matmul_params: int  # the "N" of 6·N: lookup tables excluded
    n_layer: int
    d_attn: int  # n_head * head_dim
    vocab_size: int


def model_shape(model: nn.Module) -> ModelShape:
    """Shape of an lmlab GPT (GPTConfig fields) or HFCausalLM / PreTrainedModel (HF config fields)."""
    config = model.config
    n_layer = _first_attr(config, "n_layer", "num_hidden_layers", "num_layers")
    n_head = _first_attr(config, "n_head", "num_attention_heads")
    width = _first_attr(config, "n_embd", "hidden_size", "d_model")
    head_dim = getattr(config, "head_dim", None) or width // n_head
    n_params = sum(p.numel() for p in model.parameters())
    n_matmul = model.num_params(non_embedding=True) if hasattr(model, "num_params") else n_params
    return ModelShape(n_params, n_matmul, n_layer, n_head * head_dim, config.vocab_size)


def _first_attr(config, *names: str) -> int:
    for name in names:
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ValueError(f"model config {type(config).__name__} has none of the fields {', '.join(names)}")


def train_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token (formula in the module docstring)."""
    return 6.0 * shape.n_matmul_params + 12.0 * shape.n_layer * shape.d_attn * seq_len


def precision_dtype(precision: str | int) -> torch.dtype:
    """The dtype matmuls run in under a Lightning ``trainer.precision`` setting."""
    dtype = _PRECISIONS.get(str(precision))
    if dtype is None:
        raise ArgumentError("precision", precision, f"allowed: {', '.join(_PRECISIONS)}")
    return dtype


def peak_flops_per_device(
    device: torch.device | str, dtype: torch.dtype, override: float | None = None
) -> float | None:
    """Peak FLOP/s of one device for matmuls in ``dtype``.

    ``override`` wins. CUDA devices are looked up in :data:`PEAK_FLOPS` by name (None, with a
    warning, when unknown: pass an override). On CPU the peak is measured with a short matmul,
    so MFU exists everywhere.
    """
    if override is not None:
        if override <= 0:
            raise ValueError(f"peak_flops={override} must be > 0")
        return float(override)
    device = torch.device(device)
    if device.type == "cpu":
        return measured_matmul_flops(dtype)
    if device.type != "cuda":
        warnings.warn(f"no peak FLOP/s known for device type {device.type!r}; set peak_flops", stacklevel=2)
        return None
    name = torch.cuda.get_device_name(device)
    dtype_name = _DTYPE_NAMES.get(dtype)
    if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
        dtype_name = "tf32"
    return lookup_peak_flops(name, dtype_name)


def lookup_peak_flops(device_name: str, dtype_name: str | None) -> float | None:
    lowered = device_name.lower()
    for key, peaks in PEAK_FLOPS:
        if key in lowered:
            if dtype_name not in peaks:
                warnings.warn(
                    f"{device_name} has no tensor-core peak for {dtype_name}; set peak_flops", stacklevel=3
                )
                return None
            return peaks[dtype_name]
    warnings.warn(f"peak FLOP/s of {device_name!r} unknown; set peak_flops to get MFU", stacklevel=3)
    return None


@cache
def measured_matmul_flops(dtype: torch.dtype = torch.float32, size: int = 512, seconds: float = 0.2) -> float:
    """Best FLOP/s of square CPU matmuls over about ``seconds``: the CPU's practical peak."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' combined peak."""
    return flops_per_token * tokens_per_s / (peak_flops * num_devices)


@dataclass
class CostProjection:
    """Training and inference cost from FLOPs, measured throughput and a price per device-hour.

    ``tokens_per_s`` is measured training throughput over all ``world_size`` devices;
    ``decode_tokens_per_s`` is measured generation speed on one device.
    """

    flops_per_token: float
    n_params: int
    tokens_per_step: int
    max_steps: int
    world_size: int = 1
    tokens_per_s: float | None = None
    peak_flops: float | None = None  # per device
    price_per_device_hour: float | None = None
    decode_tokens_per_s: float | None = None
    tokens_per_param: float = 20.0  # compute-optimal budget (Hoffmann et al. 2022)

    def metrics(self) -> dict[str, float]:
        """`cost/` metrics; those that need a missing measurement or price are left out."""
        train_tokens = self.tokens_per_step * self.max_steps
        optimal_tokens = self.tokens_per_param * self.n_params
        out = {
            "cost/params": self.n_params,
            "cost/flops_per_token": self.flops_per_token,
            "cost/tokens_per_step": self.tokens_per_step,
            "cost/train_tokens": train_tokens,
            "cost/train_flops": self.flops_per_token * train_tokens,
            "cost/optimal_tokens": optimal_tokens,
            "cost/optimal_flops": self.flops_per_token * optimal_tokens,
        }
        if self.peak_flops:
            out["cost/peak_flops"] = self.peak_flops
        if self.tokens_per_s:
            out["cost/tokens_per_s"] = self.tokens_per_s
            if self.peak_flops:
                out["cost/mfu"] = mfu(
                    self.flops_per_token, self.tokens_per_s, self.peak_flops, self.world_size
                )
            for name, tokens in (("train", train_tokens), ("optimal", optimal_tokens)):
                hours = tokens / self.tokens_per_s / 3600.0
                out[f"cost/{name}_hours"] = hours
                out[f"cost/{name}_device_hours"] = hours * self.world_size
                if self.price_per_device_hour is not None:
                    out[f"cost/{name}_cost"] = hours * self.world_size * self.price_per_device_hour
        if self.decode_tokens_per_s:
            out["cost/decode_tokens_per_s"] = self.decode_tokens_per_s
            device_hours = 1e6 / self.decode_tokens_per_s / 3600.0
            out["cost/decode_device_hours_per_mtok"] = device_hours
            if self.price_per_device_hour is not None:
                out["cost/decode_cost_per_mtok"] = device_hours * self.price_per_device_hour
        return out


def measure_train_throughput(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    steps: PositiveInt = 5,
    warmup: int = 2,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Tokens/s of forward + cross-entropy + backward on random tokens (no optimizer step)."""
    device = next(model.parameters()).device
    vocab = model_shape(model).vocab_size
    tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), device=device)
    was_training = model.training
    model.train()
    try:
        for i in range(warmup + steps):
            if i == warmup:
                synchronize(device)
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(tokens[:, :-1]).logits
                loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
            loss.backward()
        synchronize(device)
        elapsed = time.perf_counter() - start
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return batch_size * seq_len * steps / elapsed


@torch.inference_mode()
def measure_decode_speed(
    model: nn.Module,
    batch_size: int = 1,
    new_tokens: int = 32,
    prompt_len: int = 8,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Generated tokens/s of greedy decoding with the model's KV cache (prefill not timed)."""
    device = next(model.parameters()).device
    max_len = min(prompt_len + new_tokens, getattr(model, "max_seq_len", prompt_len + new_tokens))
    new_tokens = max_len - prompt_len
    if new_tokens < 1:
        raise ValueError(f"decode benchmark needs prompt_len={prompt_len} < the model's context {max_len}")
    prompt = torch.randint(0, model_shape(model).vocab_size, (batch_size, prompt_len), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            cache = model.new_cache(batch_size, max_len)
            next_token = model(prompt, cache=cache).logits[:, -1:].argmax(-1)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(new_tokens):
                next_token = model(next_token, cache=cache).logits[:, -1:].argmax(-1)
            synchronize(device)
        elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return batch_size * new_tokens / elapsed


def format_quantity(value: float) -> str:
    """Compact human form: 1.23e+15 -> '1.23 P', 0.0042 -> '0.0042'."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    exponent = min(int(math.floor(math.log10(abs(value)) / 3)), 5)
    if exponent <= 0:
        return f"{value:.4g}"
    return f"{value / 10 ** (3 * exponent):.3g} {' kMGTP'[exponent]}"
