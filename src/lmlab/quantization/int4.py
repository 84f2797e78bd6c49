"""int4 weight-only format: group-wise scales along the input dimension, two weights per byte.

Each row of an [out, in] weight is cut into groups of ``group_size`` consecutive input columns,
each with its own scale:
- asymmetric (default): ŵ = q * scale + offset with q in [0, 15] spanning the group's [min, max];
- symmetric: ŵ = (q - 8) * scale with q - 8 in [-8, 7] and scale = max|w| / 7 (no offset).

Scales and offsets are bfloat16, as in gpt-fast and torchao: 4 bytes per group of ``group_size`` half-byte
weights. q is computed against the stored, rounded values (offset
rounded down, scale rounded up), so the grid still covers the whole group and |w - ŵ| <= scale / 2
holds for every element. A byte holds column 2j in its low nibble and column 2j + 1 in its high one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = 15  # q in [0, 15]
SYMMETRIC_ZERO = 8  # symmetric: stored q = signed q + 8
STORAGE_DTYPE = torch.bfloat16


def _to_bf16(x: torch.Tensor, up: bool) -> torch.Tensor:
    """x rounded to bfloat16 in one direction (up: result >= x; down: result <= x)."""
    r = x.to(STORAGE_DTYPE)
    step = torch.nextafter(r, torch.full_like(r, float("inf") if up else float("-inf")))
    return torch.where(r.float() < x if up else r.float() > x, step, r)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[..., 2n] integers in [0, 15] -> [..., n] uint8."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[..., n] uint8 -> [..., 2n] uint8 in [0, 15]."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def quantize_int4(weight: torch.Tensor, group_size: int, symmetric: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """[out, in] float weight -> (packed uint8 [out, in / 2], scale bf16 [out, in / group_size],
    offset bf16 of the same shape, or None when symmetric)."""
    out_features, in_features = weight.shape
    groups = weight.detach().float().view(out_features, in_features // group_size, group_size)
    if symmetric:
        scale = _to_bf16(groups.abs().amax(-1) / (LEVELS - SYMMETRIC_ZERO), up=True)
        offset = None
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(groups / scale.float()[..., None]).clamp_(-SYMMETRIC_ZERO, LEVELS - SYMMETRIC_ZERO)
        q += SYMMETRIC_ZERO
    else:
        offset = _to_bf16(groups.amin(-1), up=False)
        scale = _to_bf16((groups.amax(-1) - offset.float()) / LEVELS, up=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round((groups - offset.float()[..., None]) / scale.float()[..., None]).clamp_(0, LEVELS)
    return pack_int4(q.view(out_features, in_features)), scale, offset


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """packed [..., in / 2], scale and offset [..., groups] (any leading dims) -> float [..., in]."""
    q = unpack_int4(packed)
    w = q.view(*q.shape[:-1], scale.shape[-1], -1).float()  # a fresh tensor: the arithmetic runs in place
    if offset is None:
        w.sub_(SYMMETRIC_ZERO).mul_(scale.float()[..., None])
    else:
        w.mul_(scale.float()[..., None]).add_(offset.float()[..., None])
    return w.flatten(-2).to(dtype)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                offset: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] @ dequantized weight.T -> [..., out] in x's dtype."""
    return F.linear(x, dequantize_int4(packed, scale, offset, x.dtype))
