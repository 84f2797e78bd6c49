"""int8 weight-only format: one symmetric float32 scale per output channel, int8 storage.

For a weight row w: scale = max|w| / 127 and q = round(w / scale) in [-127, 127], so the
dequantized weight q * scale is within scale / 2 of w everywhere. A row of zeros gets scale 1
(every q is 0 and the row dequantizes exactly).

The matmul converts the int8 weight to the activations' dtype and scales the outputs (one multiply
per output instead of one per weight). On CPU with bfloat16 activations ``torch._weight_int8pack_mm``
is several times faster than both that and a bfloat16 matmul, and for layers of 768 inputs and more
also faster than a float32 matmul (measured by benchmarks/quantize.py); with float32 or float16
activations it is slower than the conversion on this torch build, and with bfloat16 and an input
size that is not a multiple of 8 it crashes or returns wrong values. So it is used for bfloat16 on
CPU with in_features % 8 == 0; ``matmul_dtype=torch.bfloat16`` lets float32 models use it too (inputs
rounded to bfloat16, outputs cast back), and that is the default on CPU (:func:`fastest_matmul_dtype`):
with the conversions it is still faster than dequantizing in float32 at every layer shape measured,
from 128 x 128 up (at a perplexity change under 0.01%, README). ``matmul_dtype=torch.float32`` computes
exactly ``x @ dequantized.T`` in float32.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

QMAX = 127

log = logging.getLogger(__name__)
_logged: set[tuple] = set()  # the choices fastest_matmul_dtype has logged


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight -> (q int8 [out, in], scale float32 [out])."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=-1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[..., None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [..., in] and scale [...] (any leading dims, e.g. gathered embedding rows) -> float [..., in]."""
    return (q.float() * scale.float()[..., None]).to(dtype)


def packed_kernel_applies(x: torch.Tensor, in_features: int, dtype: torch.dtype | None = None) -> bool:
    """Where ``torch._weight_int8pack_mm`` is both correct and faster here (see the module docstring), for x
    (or x cast to ``dtype``)."""
    return (x.device.type == "cpu" and (dtype or x.dtype) == torch.bfloat16 and in_features % 8 == 0
            and hasattr(torch, "_weight_int8pack_mm"))


def fastest_matmul_dtype(x: torch.Tensor, in_features: int) -> torch.dtype:
    """The dtype an int8 matmul of ``x`` runs fastest in, correctly: bfloat16 for float32 activations on CPU
    where the packed kernel applies, else x's own. Logs each choice once."""
    packed = x.dtype == torch.float32 and packed_kernel_applies(x, in_features, torch.bfloat16)
    dtype = torch.bfloat16 if packed else x.dtype
    key = (x.device.type, x.dtype, dtype)
    if key not in _logged:
        _logged.add(key)
        how = ("in bfloat16 through torch._weight_int8pack_mm" if packed_kernel_applies(x, in_features, dtype)
               else "in their own dtype, the weight dequantized")
        log.info("int8 matmuls of %s activations on %s run %s (matmul_dtype=float32: exactly x @ dequantized.T)",
                 str(x.dtype).removeprefix("torch."), x.device.type, how)
    return dtype


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [..., in] @ dequantized weight.T -> [..., out] in x's dtype, computed in ``matmul_dtype``
    (None: :func:`fastest_matmul_dtype`)."""
    if matmul_dtype is None:
        matmul_dtype = fastest_matmul_dtype(x, q.shape[1])
    if x.dtype != matmul_dtype:
        return int8_matmul(x.to(matmul_dtype), q, scale).to(x.dtype)
    if packed_kernel_applies(x, q.shape[1]):
        out = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, scale.to(x.dtype))
        return out.view(*x.shape[:-1], q.shape[0])
    return F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)
