"""lmlab's GPT options <-> the config of a Hugging Face ``LlamaForCausalLM`` or ``GPT2LMHeadModel``.

A model is exported only when one of the two classes computes exactly the function lmlab's GPT computes
(same logits up to float rounding); every other combination is refused, naming the options that prevent it.

=====================  ===========================================  ===========================================
lmlab option           LlamaForCausalLM                             GPT2LMHeadModel
=====================  ===========================================  ===========================================
position=rope          rope_parameters {rope_type: default,         refused (GPT-2 has learned positions only)
rope_theta             rope_theta} and a top-level rope_theta
                       (read by transformers 4 and vLLM)
position=learned       refused (Llama has rotary positions only)    wpe, n_positions = block_size
norm=rmsnorm           rms_norm_eps = norm_eps (default 1e-6)       refused (GPT-2 has LayerNorm only)
norm=layernorm         refused (Llama has RMSNorm only)             layer_norm_epsilon = norm_eps (default 1e-5)
mlp=swiglu             gate/up/down_proj, hidden_act=silu,          refused (GPT-2's MLP is not gated)
                       intermediate_size = the SwiGLU width
mlp=standard           refused (Llama's MLP is gated)               c_fc/c_proj, n_inner; activation_function:
activation                                                          gelu->gelu (erf), gelu_tanh->
                                                                    gelu_pytorch_tanh, relu, silu, tanh, sigmoid
n_kv_head < n_head     num_key_value_heads                          keys and values repeated to n_head heads
                                                                    (the same function, more weights)
bias                   attention_bias = mlp_bias = bias             true; false: zero biases (the same function)
tie_embeddings         tie_word_embeddings                          tie_word_embeddings
block_size             max_position_embeddings                      n_positions
n_embd/n_head          hidden_size, num_attention_heads,            n_embd, n_head
                       head_dim = n_embd / n_head
dropout (training)     attention_dropout (Llama has no residual     attn_pdrop = resid_pdrop = embd_pdrop
                       dropout: fine-tuning there differs)
=====================  ===========================================  ===========================================

So the exportable families are (rope, rmsnorm, swiglu) -> Llama and (learned, layernorm, standard) -> GPT-2;
learned positions with RMSNorm or SwiGLU, rotary positions with LayerNorm or a standard MLP, are refused.

Importing reads the same table backwards and refuses what lmlab's GPT cannot compute, naming the field:
another ``model_type``; Llama with RoPE scaling (``rope_scaling`` / a ``rope_type`` other than default),
``partial_rotary_factor`` < 1, a ``head_dim`` other than hidden_size / num_attention_heads, a ``hidden_act``
other than silu, ``attention_bias`` != ``mlp_bias``, or an ``intermediate_size`` the SwiGLU width rule cannot
give (>= 256 and not a multiple of 256); GPT-2 with an activation lmlab lacks, ``scale_attn_weights`` false,
``scale_attn_by_inverse_layer_idx`` or cross-attention. A norm epsilon other than lmlab's default is kept
(``norm_eps``): it is not a detail, with embeddings of std 0.02 the first norm sees a mean square of 4e-4,
where 1e-5 instead of 1e-6 changes every normalised activation by about 1%.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields

from lmlab.errors import InputError
from lmlab.models.gpt import DEFAULT_NORM_EPS, GPTConfig, mlp_hidden_size, norm_eps

LLAMA, GPT2 = "llama", "gpt2"
CLASS_NAMES = {LLAMA: "LlamaForCausalLM", GPT2: "GPT2LMHeadModel"}
FAMILY_OPTIONS = {LLAMA: {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu"},
                  GPT2: {"position": "learned", "norm": "layernorm", "mlp": "standard"}}
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu",
                    "tanh": "tanh", "sigmoid": "sigmoid"}
# transformers' names for the same functions (gelu_new and gelu_fast are the tanh form written out)
GPT2_ACTIVATIONS_READ = {**{v: k for k, v in GPT2_ACTIVATIONS.items()}, "gelu_new": "gelu_tanh",
                         "gelu_fast": "gelu_tanh", "swish": "silu"}
DEFAULT_MLP_RATIO = GPTConfig.mlp_ratio
# what the weights do not depend on: taken from whoever builds the model (GPT(init_from=...)), not the folder
NOT_ARCHITECTURE = ("dropout",)


class UnmappableError(InputError):
    """A model that no Hugging Face class computes exactly, or a Hugging Face config lmlab's GPT cannot compute."""


def family_of(config: GPTConfig) -> str:
    """'llama' or 'gpt2': the class that computes this model; UnmappableError naming the options that prevent it."""
    family = LLAMA if config.position == "rope" else GPT2
    wrong = {k: v for k, v in FAMILY_OPTIONS[family].items() if getattr(config, k) != v}
    if wrong:
        given = ", ".join(f"{k}={getattr(config, k)!r}" for k in ("position", *wrong))
        raise UnmappableError(
            f"{given}: no Hugging Face class computes this model exactly; {CLASS_NAMES[LLAMA]} needs position='rope', "
            f"norm='rmsnorm', mlp='swiglu' and {CLASS_NAMES[GPT2]} needs position='learned', norm='layernorm', "
            "mlp='standard'")
    return family


def hf_config(config: GPTConfig, bos_token_id=None, eos_token_id=None, pad_token_id=None) -> tuple[str, dict]:
    """(family, keyword arguments of transformers' LlamaConfig or GPT2Config) for this lmlab model."""
    family = family_of(config)
    tokens = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if family == LLAMA:
        return family, dict(
            vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=mlp_hidden_size(config),
            num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.n_kv_head, head_dim=config.n_embd // config.n_head, hidden_act="silu",
            max_position_embeddings=config.block_size, rms_norm_eps=norm_eps(config),
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            rope_theta=config.rope_theta,  # what transformers 4 reads (5 takes rope_parameters first)
            attention_bias=config.bias, mlp_bias=config.bias, attention_dropout=config.dropout,
            tie_word_embeddings=config.tie_embeddings, **tokens)
    return family, dict(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=mlp_hidden_size(config), activation_function=GPT2_ACTIVATIONS[config.activation],
        layer_norm_epsilon=norm_eps(config), resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, scale_attn_weights=True, tie_word_embeddings=config.tie_embeddings, **tokens)


def gpt_config(hf: dict) -> dict:
    """The keyword arguments of lmlab's GPT that compute the model of a Hugging Face config.json (a dict);
    UnmappableError naming the field lmlab's GPT cannot express."""
    model_type = hf.get("model_type")
    if model_type == LLAMA:
        return _from_llama(hf)
    if model_type == GPT2:
        return _from_gpt2(hf)
    raise UnmappableError(f"model_type={model_type!r}: lmlab's GPT reads Llama ('llama') and GPT-2 ('gpt2') models")


def _from_llama(hf: dict) -> dict:
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    rope = _rope_parameters(hf)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UnmappableError(f"rope_scaling={rope}: lmlab's GPT has plain RoPE (rope_type 'default') only")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise UnmappableError(f"partial_rotary_factor={partial}: lmlab's GPT rotates the whole head")
    head_dim = hf.get("head_dim") or width // heads
    if head_dim * heads != width:
        raise UnmappableError(f"head_dim={head_dim}: lmlab's GPT has head_dim = hidden_size / num_attention_heads "
                              f"= {width} / {heads}")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnmappableError(f"hidden_act={hf['hidden_act']!r}: lmlab's SwiGLU MLP gates with silu")
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise UnmappableError(f"attention_bias={attention_bias}, mlp_bias={mlp_bias}: lmlab's GPT has one bias "
                              "option for both")
    config = dict(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=heads, n_kv_head=hf.get("num_key_value_heads") or heads,
        n_embd=width, dropout=float(hf.get("attention_dropout", 0.0)), bias=attention_bias, position="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm="rmsnorm",
        norm_eps=_eps("rmsnorm", hf.get("rms_norm_eps", 1e-6)), mlp="swiglu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    config["mlp_ratio"] = _mlp_ratio(config, hf["intermediate_size"], "intermediate_size")
    return _complete(config)


def _from_gpt2(hf: dict) -> dict:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS_READ:
        raise UnmappableError(f"activation_function={activation!r}: lmlab's GPT has "
                              f"{', '.join(sorted(GPT2_ACTIVATIONS_READ))}")
    for field, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
        if bool(hf.get(field, wanted)) != wanted:
            raise UnmappableError(f"{field}={hf[field]}: lmlab's GPT has {field}={wanted} only")
    width = hf["n_embd"]
    config = dict(
        vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_kv_head=hf["n_head"], n_embd=width, dropout=float(hf.get("resid_pdrop", 0.1)),
        bias=True, position="learned", norm="layernorm",
        norm_eps=_eps("layernorm", hf.get("layer_norm_epsilon", 1e-5)), mlp="standard",
        activation=GPT2_ACTIVATIONS_READ[activation], tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    config["mlp_ratio"] = _mlp_ratio(config, hf.get("n_inner") or 4 * width, "n_inner")
    return _complete(config)


def _rope_parameters(hf: dict) -> dict:
    """transformers 5 writes rope_parameters; older configs rope_theta and rope_scaling (None: plain RoPE)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in rope.values()):
        raise UnmappableError(f"rope_parameters={rope}: RoPE settings per layer type; lmlab's GPT has one")
    return rope


def _eps(norm: str, eps: float) -> float | None:
    return None if eps == DEFAULT_NORM_EPS[norm] else float(eps)


def _mlp_ratio(config: dict, width: int, field: str) -> float:
    """An mlp_ratio whose hidden-width rule (``mlp_hidden_size``) gives ``width``: the default ratio when it does,
    else the ungated width h the rule maps to it, as h / n_embd (nudged up when float division lands below h)."""
    n_embd = config["n_embd"]

    def gives(ratio: float) -> bool:
        return mlp_hidden_size(GPTConfig(**{**config, "mlp_ratio": ratio})) == width

    if gives(DEFAULT_MLP_RATIO):
        return DEFAULT_MLP_RATIO
    hidden = width if config["mlp"] != "swiglu" else (3 * width + 1) // 2  # inverse of int(2h/3), and of 256*ceil
    ratio = hidden / n_embd
    if int(ratio * n_embd) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    if not gives(ratio):
        raise UnmappableError(f"{field}={width}: lmlab's SwiGLU width is 2/3 of mlp_ratio * n_embd, rounded up to a "
                              "multiple of 256 from 384 on; no mlp_ratio gives this width")
    return ratio


def _complete(config: dict) -> dict:
    """Every GPTConfig field, in its order (the fields a Hugging Face config does not set take their defaults)."""
    full = asdict(GPTConfig(**config))
    return {f.name: full[f.name] for f in fields(GPTConfig)}
