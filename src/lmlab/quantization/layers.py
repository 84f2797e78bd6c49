"""Layers that hold int8/int4 weights: drop-in replacements for nn.Linear and nn.Embedding.

A quantized weight keeps the layout of the float one ([out, in] for a Linear, [rows, dim] for an
embedding table) so a tied LM head and token embedding stay one tensor: the embedding gathers
dequantized rows of the head's weight. The quantized tensors' dtypes belong to the format, so
``model.to(torch.bfloat16)`` moves them but does not cast them; it only changes the dtype the layer
computes in (the bias, and the embeddings it returns).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmlab.quantization.int4 import STORAGE_DTYPE, dequantize_int4, int4_matmul, quantize_int4
from lmlab.quantization.int8 import dequantize_int8, int8_matmul, quantize_int8

_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, mode: str,
            matmul_dtype: torch.dtype | None) -> torch.Tensor:
    if mode == "int8":
        return int8_matmul(x, qweight, scale, matmul_dtype)
    return int4_matmul(x, qweight, scale, offset)


@torch.library.custom_op("lmlab::quantized_matmul", mutates_args=())
def quantized_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
                     mode: str, matmul_dtype: torch.dtype | None) -> torch.Tensor:
    """The eager kernels as one op the compiler does not look into: Inductor's own lowering of the dequantize +
    matmul is slower than eager on CPU and cannot compile torch's packed int8 kernel (``matmul_dtype=bfloat16``;
    README, Quantization); the ops around it still fuse."""
    return _matmul(x, qweight, scale, offset, mode, matmul_dtype)


@quantized_matmul.register_fake
def _(x, qweight, scale, offset, mode, matmul_dtype):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


class QuantizedWeight(nn.Module):
    """An [out, in] weight in int8 (per-row scales) or int4 (per-group scales, packed) storage."""

    def __init__(self, out_features: int, in_features: int, mode: str, group_size: int | None = None,
                 symmetric: bool = False, matmul_dtype: torch.dtype | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.mode, self.group_size, self.symmetric = mode, group_size, symmetric
        self.matmul_dtype = matmul_dtype  # int8: the dtype matmuls compute in (None: the input's)
        self.dtype = dtype  # what the float weight was, and what dequantize() returns
        if mode == "int8":
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.empty(out_features, dtype=torch.float32, device=device))
            self.register_buffer("offset", None)
        else:
            groups = (out_features, in_features // group_size)
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scale", torch.empty(groups, dtype=STORAGE_DTYPE, device=device))
            offset = None if symmetric else torch.empty(groups, dtype=STORAGE_DTYPE, device=device)
            self.register_buffer("offset", offset)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float [out, in] weight into this layer's storage."""
        if self.mode == "int8":
            q, scale, offset = *quantize_int8(weight), None
        else:
            q, scale, offset = quantize_int4(weight, self.group_size, self.symmetric)
        self.qweight.copy_(q)
        self.scale.copy_(scale)
        if offset is not None:
            self.offset.copy_(offset)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the layer computes with, as a float [out, in] tensor."""
        return self.rows(None, dtype)

    def rows(self, index: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dequantized rows ``weight[index]`` ([*index.shape, in]); all rows for index None."""
        dtype = dtype or self.dtype
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        if self.mode == "int8":
            return dequantize_int8(pick(self.qweight), pick(self.scale), dtype)
        offset = None if self.offset is None else pick(self.offset)
        return dequantize_int4(pick(self.qweight), pick(self.scale), offset, dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] @ weight.T, in x's dtype; under ``torch.compile`` one opaque op (see ``quantized_matmul``)."""
        args = (x, self.qweight, self.scale, self.offset, self.mode, self.matmul_dtype)
        return quantized_matmul(*args) if torch.compiler.is_compiling() else _matmul(*args)

    def nbytes(self) -> int:
        """Bytes of the quantized weight, scales and offsets included."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scale, self.offset) if t is not None)

    def _apply(self, fn, recurse=True):
        """Device moves reach the quantized tensors; dtype casts set the compute dtype instead."""
        kept = {}
        for name in ("scale", "offset"):
            tensor = self._buffers[name]
            if tensor is not None:
                kept[name] = tensor.dtype
                self._buffers[name] = tensor.view(_SAME_WIDTH_INT[tensor.dtype])
        try:
            super()._apply(fn, recurse)
        finally:
            for name, dtype in kept.items():
                self._buffers[name] = self._buffers[name].view(dtype)
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype
        return self

    def format_repr(self) -> str:
        group = f", group_size={self.group_size}, symmetric={self.symmetric}" if self.mode == "int4" else ""
        matmul = f", matmul_dtype={self.matmul_dtype}" if self.matmul_dtype is not None else ""
        return f"mode={self.mode}{group}{matmul}"


class QuantizedLinear(QuantizedWeight):
    """nn.Linear with a quantized weight and a float bias."""

    def __init__(self, out_features: int, in_features: int, bias: bool, mode: str, group_size: int | None = None,
                 symmetric: bool = False, matmul_dtype: torch.dtype | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__(out_features, in_features, mode, group_size, symmetric, matmul_dtype, dtype, device)
        bias_tensor = torch.empty(out_features, dtype=dtype, device=device) if bias else None
        self.bias = None if bias_tensor is None else nn.Parameter(bias_tensor, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.format_repr()}")


class QuantizedEmbedding(QuantizedWeight):
    """nn.Embedding with a quantized [num_embeddings, dim] table (one scale per row, or per group)."""

    @property
    def num_embeddings(self) -> int:
        return self.out_features

    @property
    def embedding_dim(self) -> int:
        return self.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.format_repr()}"


class TiedEmbedding(nn.Module):
    """The token embedding of a model whose LM head shares its weight: rows of the quantized head.

    The head is kept outside this module's children so the checkpoint stores its tensors once.
    """

    def __init__(self, head: QuantizedLinear):
        super().__init__()
        self._head = (head,)
        self.dtype = head.dtype

    @property
    def head(self) -> QuantizedLinear:
        return self._head[0]

    @property
    def num_embeddings(self) -> int:
        return self.head.out_features

    @property
    def embedding_dim(self) -> int:
        return self.head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.rows(ids, self.dtype)

    def _apply(self, fn, recurse=True):
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return "rows of the quantized LM head (tied embeddings)"
