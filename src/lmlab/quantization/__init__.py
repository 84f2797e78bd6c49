"""Weight-only quantization of any lmlab causal LM (own GPT or Hugging Face): int8 and int4.

    from lmlab.quantization import quantize, save_quantized
    model = quantize(model, "int8")                      # or "int4", group_size=64
    save_quantized(model, "model-int8.safetensors", tokenizer)

Plain PyTorch: formats in int8.py and int4.py, layers in layers.py, the model conversion in
convert.py, the checkpoint format in checkpoint.py, comparisons with the float model in measure.py.
"""

from lmlab.quantization.checkpoint import load_quantized, save_quantized
from lmlab.quantization.convert import (
    DEFAULT_GROUP_SIZE,
    MODES,
    QuantizationSettings,
    is_quantized,
    quantization_settings,
    quantize,
    settings_of,
)
from lmlab.quantization.layers import QuantizedEmbedding, QuantizedLinear, TiedEmbedding

__all__ = [
    "quantize",
    "quantization_settings",
    "QuantizationSettings",
    "is_quantized",
    "settings_of",
    "save_quantized",
    "load_quantized",
    "QuantizedLinear",
    "QuantizedEmbedding",
    "TiedEmbedding",
    "MODES",
    "DEFAULT_GROUP_SIZE",
]
