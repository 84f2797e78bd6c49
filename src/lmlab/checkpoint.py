"""Self-describing checkpoints: a ``.ckpt`` alone rebuilds its model and tokenizer.

Lightning checkpoints carry an ``lmlab`` entry (written by ``LitLM.on_save_checkpoint``) with the
model's class and constructor config and the tokenizer's JSON, so ``generate.py`` and
distillation need neither the original Hydra config nor the data.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def model_spec(model: nn.Module) -> dict:
    from lmlab.models.hf import HFCausalLM

    if isinstance(model, HFCausalLM):
        return {"kind": "hf", "config": model.to_config_dict()}
    return {"kind": "gpt", "config": model.to_config_dict()}


def build_model(spec: dict) -> nn.Module:
    if spec["kind"] == "hf":
        from transformers import AutoConfig, AutoModelForCausalLM

        from lmlab.models.hf import HFCausalLM

        config = dict(spec["config"])
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
        return HFCausalLM(AutoModelForCausalLM.from_config(hf_config))
    from lmlab.models.gpt import GPT

    return GPT(**spec["config"])


def tokenizer_spec(tokenizer) -> dict:
    return {
        "json": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
    }


def build_tokenizer(spec: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec["json"]), **spec["special_tokens"])


def resolve_checkpoint(path: str | Path, field: str = "ckpt") -> Path:
    """A .ckpt file, or a run directory (its checkpoints/best.ckpt, else checkpoints/last.ckpt).

    ``field`` names the config field in errors."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise FileNotFoundError(f"{field}={path}: a run directory, but it has no checkpoints/best.ckpt or last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"{field}={path} does not exist (give a .ckpt file or a run directory)")
    return path


def load_checkpoint(path: str | Path, map_location="cpu", field: str = "ckpt"):
    """(model in eval mode, tokenizer, raw checkpoint dict) from a checkpoint file or run directory.

    A ``.safetensors`` file is a quantized checkpoint (``lmlab quantize``); its dict is the header metadata."""
    if str(path).endswith(".safetensors"):
        from lmlab.quantization.checkpoint import load_quantized

        return load_quantized(path, field)
    path = resolve_checkpoint(path, field)
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if "lmlab" not in ckpt:
        raise ValueError(f"{field}={path} was not written by lmlab (no 'lmlab' entry)")
    meta = ckpt["lmlab"]
    model = build_model(meta["model"])
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    tokenizer = build_tokenizer(meta["tokenizer"]) if meta.get("tokenizer") else None
    return model.eval(), tokenizer, ckpt
