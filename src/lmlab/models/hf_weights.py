"""lmlab GPT state dicts <-> the state dicts of ``LlamaForCausalLM`` and ``GPT2LMHeadModel``.

lmlab fuses q, k and v into one Linear (rows: n_embd queries, then keys, then values); Llama keeps three, and
GPT-2 one ``Conv1D`` whose weight is stored transposed ([in, out]). RoPE needs no permutation: lmlab rotates
halves, as Llama does. Tied embeddings are one tensor on both sides (lmlab lists it as ``lm_head.weight`` too).
"""

from __future__ import annotations

import torch

from lmlab.models.gpt import GPTConfig
from lmlab.models.hf_architecture import LLAMA

Tensors = dict[str, torch.Tensor]


def to_hf(state: Tensors, config: GPTConfig, family: str) -> Tensors:
    """The Hugging Face state dict (with ``lm_head.weight`` even when tied: the HF model ties it again)."""
    return _to_llama(state, config) if family == LLAMA else _to_gpt2(state, config)


def from_hf(tensors: Tensors, config: GPTConfig, family: str) -> Tensors:
    """lmlab's state dict from a Hugging Face one; keys the mapping does not read are left out (the caller's
    strict ``load_state_dict`` names anything missing)."""
    return _from_llama(tensors, config) if family == LLAMA else _from_gpt2(tensors, config)


def _qkv_sizes(config: GPTConfig) -> list[int]:
    kv = config.n_kv_head * (config.n_embd // config.n_head)
    return [config.n_embd, kv, kv]


def _layers(state: Tensors, names: dict[str, str], source: str, target: str, transpose=False) -> Tensors:
    """Rename ``source{name}.weight/.bias`` to ``target{new}.weight/.bias`` for each (name, new), where present."""
    out = {}
    for name, new in names.items():
        for part in ("weight", "bias"):
            key = f"{source}{name}.{part}"
            if key in state:
                tensor = state[key]
                out[f"{target}{new}.{part}"] = tensor.t() if transpose and part == "weight" else tensor
    return out


LLAMA_NAMES = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm", "attn.proj": "self_attn.o_proj",
               "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj"}


def _to_llama(state: Tensors, config: GPTConfig) -> Tensors:
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["norm_f.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(config.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out.update(_layers(state, LLAMA_NAMES, src, dst))
        for part in ("weight", "bias"):
            if f"{src}attn.qkv.{part}" in state:
                q, k, v = state[f"{src}attn.qkv.{part}"].split(_qkv_sizes(config))
                out.update({f"{dst}self_attn.{n}_proj.{part}": t for n, t in zip("qkv", (q, k, v), strict=True)})
    return out


def _from_llama(tensors: Tensors, config: GPTConfig) -> Tensors:
    out = {"wte.weight": tensors["model.embed_tokens.weight"], "norm_f.weight": tensors["model.norm.weight"]}
    out["lm_head.weight"] = out["wte.weight"] if config.tie_embeddings else tensors["lm_head.weight"]
    for i in range(config.n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        out.update(_layers(tensors, {v: k for k, v in LLAMA_NAMES.items()}, src, dst))
        for part in ("weight", "bias"):
            parts = [tensors.get(f"{src}self_attn.{n}_proj.{part}") for n in "qkv"]
            if all(p is not None for p in parts):
                out[f"{dst}attn.qkv.{part}"] = torch.cat(parts)
    return out


GPT2_LINEARS = {"attn.proj": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
GPT2_NORMS = {"norm1": "ln_1", "norm2": "ln_2"}


def _to_gpt2(state: Tensors, config: GPTConfig) -> Tensors:
    """GPT-2 has biases everywhere and no grouped-query attention: absent biases become zeros and keys and values
    are repeated to one per query head, so the exported model computes the same function."""
    state = dict(state)
    for name, tensor in list(state.items()):
        if name.endswith(".weight") and (name.startswith("blocks.") or name.startswith("norm_f")):
            bias = name.removesuffix("weight") + "bias"
            state.setdefault(bias, torch.zeros(tensor.shape[0], dtype=tensor.dtype))
    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["norm_f.weight"], "transformer.ln_f.bias": state["norm_f.bias"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(config.n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        out.update(_layers(state, GPT2_NORMS, src, dst))
        out.update(_layers(state, GPT2_LINEARS, src, dst, transpose=True))
        weight, bias = (_repeat_kv(state[f"{src}attn.qkv.{part}"], config) for part in ("weight", "bias"))
        out[f"{dst}attn.c_attn.weight"], out[f"{dst}attn.c_attn.bias"] = weight.t(), bias
    return out


def _repeat_kv(qkv: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """Fused q/k/v rows (or biases) with each key and value head repeated for the query heads that share it."""
    q, k, v = qkv.split(_qkv_sizes(config))
    repeats = config.n_head // config.n_kv_head
    head_dim = config.n_embd // config.n_head

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(0, (config.n_kv_head, head_dim)).repeat_interleave(repeats, 0).flatten(0, 1)

    return torch.cat([q, expand(k), expand(v)])


def _from_gpt2(tensors: Tensors, config: GPTConfig) -> Tensors:
    out = {"wte.weight": tensors["transformer.wte.weight"], "wpe.weight": tensors["transformer.wpe.weight"],
           "norm_f.weight": tensors["transformer.ln_f.weight"], "norm_f.bias": tensors["transformer.ln_f.bias"]}
    out["lm_head.weight"] = out["wte.weight"] if config.tie_embeddings else tensors["lm_head.weight"]
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"blocks.{i}."
        out.update(_layers(tensors, {v: k for k, v in GPT2_NORMS.items()}, src, dst))
        out.update(_layers(tensors, {v: k for k, v in GPT2_LINEARS.items()}, src, dst, transpose=True))
        out.update(_layers(tensors, {"attn.c_attn": "attn.qkv"}, src, dst, transpose=True))
    return out
