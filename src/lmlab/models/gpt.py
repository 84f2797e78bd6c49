"""lmlab's own GPT: one readable file in the spirit of nanoGPT.

Options cover the GPT-2 and Llama families: learned or rotary positions, LayerNorm or RMSNorm,
GELU-style or SwiGLU MLPs, grouped-query attention, tied embeddings and dropout. Attention runs
through ``scaled_dot_product_attention``; training passes no mask (``is_causal=True``) so the
flash kernel can run, decoding passes a cache and, for padded batches, an attention mask.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import Positive, PositiveInt, check_arguments, run_rules
from lmlab.errors import ArgumentError, InputError
from lmlab.models.activations import Activation, ActivationName
from lmlab.models.cache import KVCache
from lmlab.models.mup import apply_mup_init, attention_scale, mup_rules, readout_multiplier
from lmlab.models.output import CausalLMOutput

Dropout = Annotated[float, at.Ge(0), at.Lt(1)]


def architecture_rules(n_embd: int, n_head: int, n_kv_head: int | None, position: str, parametrization: str,
                       mup_base_width: int, tie_embeddings: bool, readout_zero_init: bool) -> None:
    """Heads split the width, key/value heads split the heads, RoPE rotates pairs of a head's dimensions; μP's
    settings fit the model (lmlab.models.mup)."""
    if n_embd % n_head:
        raise ArgumentError("n_embd", n_embd, "must be divisible by {n_head}", n_head=n_head)
    kv = n_kv_head or n_head
    if n_head % kv:
        raise ArgumentError("n_head", n_head, "must be divisible by {n_kv_head}", n_kv_head=kv)
    if position == "rope" and (n_embd // n_head) % 2:
        raise ArgumentError("position", position, f"needs an even head dimension: {{n_embd}} / {{n_head}} = "
                            f"{n_embd // n_head}", n_embd=n_embd, n_head=n_head)
    mup_rules(parametrization, mup_base_width, n_head, position, tie_embeddings, readout_zero_init)


@dataclass
class GPTConfig:
    """The architecture: every field of ``GPT(**fields)``, its range and its default."""

    vocab_size: PositiveInt = 4096
    block_size: PositiveInt = 256
    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    n_kv_head: PositiveInt | None = None  # None: same as n_head; fewer: grouped-query attention
    n_embd: PositiveInt = 128
    mlp_ratio: Positive = 4.0
    dropout: Dropout = 0.0
    bias: bool = True
    position: Literal["learned", "rope"] = "learned"
    rope_theta: Positive = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: Positive | None = None  # None: 1e-5 for LayerNorm (torch's default), 1e-6 for RMSNorm
    mlp: Literal["standard", "swiglu"] = "standard"
    activation: ActivationName = "gelu"
    tie_embeddings: bool = True
    # μP (lmlab.models.mup): "mup" makes the best LR and init independent of n_embd; the same model as
    # "standard" at n_embd == mup_base_width
    parametrization: Literal["standard", "mup"] = "standard"
    mup_base_width: PositiveInt = 128
    readout_zero_init: bool = False  # zero-initialise an untied lm_head (TP5's advice for μP)

    argument_rules = staticmethod(architecture_rules)

    def __post_init__(self):
        check_arguments(GPTConfig, asdict(self))
        self.n_kv_head = self.n_kv_head or self.n_head


DEFAULT_NORM_EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6}


def norm_eps(config: GPTConfig) -> float:
    return DEFAULT_NORM_EPS[config.norm] if config.norm_eps is None else config.norm_eps


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=norm_eps(config))
    return nn.LayerNorm(config.n_embd, eps=norm_eps(config), bias=config.bias)


def mlp_hidden_size(config: GPTConfig) -> int:
    """The MLP's hidden width: ``mlp_ratio * n_embd``; a SwiGLU MLP takes 2/3 of it (rounded up to a multiple
    of 256 from 384 on), which keeps the parameter count of the ungated MLP, as Llama does."""
    hidden = int(config.mlp_ratio * config.n_embd)
    if config.mlp != "swiglu":
        return hidden
    return 256 * math.ceil(2 * hidden / 3 / 256) if hidden >= 384 else int(2 * hidden / 3)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings at the given positions, shaped [B, 1, T, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        kv_dim = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.scale = attention_scale(config)  # None: SDPA's 1/sqrt(head_dim)

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None, cache_position=None):
        B, T, C = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([C, kv_dim, kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, cache_position)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,  # one new token attends to the whole cache
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
            scale=self.scale,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = mlp_hidden_size(config)
        self.gated = config.mlp == "swiglu"
        if self.gated:
            self.gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.up = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.act = Activation("silu" if self.gated else config.activation)

    def forward(self, x):
        h = self.act(self.gate(x)) * self.up(x) if self.gated else self.act(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.norm1, self.norm2 = _norm(config), _norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache=None, cache_position=None):
        x = x + self.drop(self.attn(self.norm1(x), rope, mask, cache, cache_position))
        return x + self.drop(self.mlp(self.norm2(x)))


def gpt_rules(init_from: str | None, **fields) -> None:
    """The architecture's rules; a pretrained folder must hold a model lmlab's GPT computes (its config.json
    read, cheap, before any work): its architecture is then the one checked."""
    if init_from is not None:
        from lmlab.models.pretrained import pretrained_architecture

        try:
            fields = {**fields, **pretrained_architecture(init_from)}
        except InputError as e:
            raise ArgumentError("init_from", Path(init_from), str(e)) from None
    run_rules(GPTConfig, fields)


class GPT(nn.Module):
    """Decoder-only transformer. ``GPT(**fields)`` takes the fields of :class:`GPTConfig` (its signature,
    defaults and checks are GPT's), and ``init_from``.

    ``init_from``: a Hugging Face folder of a Llama or GPT-2 model (``lmlab export`` writes one). Its
    config.json fixes the architecture and its weights initialise the model. The folder wins over the
    architecture fields given with it (one warning lists those that differ): weights fit no other architecture;
    ``dropout``, which the weights do not fix, stays the caller's. The model trains and decodes with the
    folder's tokenizer (a data module's ``tokenizer_from``). Checkpoints store the resulting architecture, not
    the folder: they rebuild without it.
    """

    __signature__ = inspect.signature(GPTConfig).replace(parameters=[
        inspect.Parameter("init_from", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None"),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(GPTConfig).parameters.values())])
    argument_rules = staticmethod(gpt_rules)

    def __init__(self, init_from: str | None = None, **fields):
        super().__init__()
        if init_from is not None:
            from lmlab.models.pretrained import with_pretrained_architecture

            fields = with_pretrained_architecture(init_from, fields)
        self.config = config = GPTConfig(**fields)
        self.init_from = init_from
        device = torch.get_default_device()  # meta inside `with torch.device("meta")`: shapes only
        with torch.device("meta"):  # the layers' own initialisation would draw weights init_weights redraws
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
            self.norm_f = _norm(config)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.readout_multiplier = readout_multiplier(config)  # None: logits unscaled
        self.to_empty(device=device)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms, residual projections scaled
        by 1/sqrt(2 n_layer); under μP, hidden matrices then rescaled (lmlab.models.mup); with ``init_from``,
        the folder's weights. The only random draw of a new model, so one built on the meta device and given
        memory later (``to_empty``, then this) gets the same weights for the same seed."""
        if self.config.tie_embeddings:  # (again after to_empty, which gives each module its own tensor)
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_module)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        if self.config.parametrization == "mup":
            apply_mup_init(self)
        if self.config.readout_zero_init:
            nn.init.zeros_(self.lm_head.weight)
        if self.init_from is not None and not self.wte.weight.is_meta:
            from lmlab.models.pretrained import load_pretrained_weights

            load_pretrained_weights(self, self.init_from)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            module.reset_parameters()

    @property
    def max_seq_len(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() if not self.config.tie_embeddings else 0
            n -= self.wpe.weight.numel() if self.wpe is not None else 0
        return n

    supports_static_cache = True

    def new_cache(self, batch_size: int, max_len: int | None = None, static: bool = False) -> KVCache:
        c = self.config
        p = self.norm_f.weight  # a float parameter in every variant (the embeddings may be quantized)
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len or c.block_size, c.n_embd // c.n_head,
                       dtype=p.dtype, device=p.device, static=static)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden: bool = False,
        cache_position: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits for every position.

        ``attention_mask`` ([B, past + T], 1 = real token) covers the cached prefix too, as in Hugging Face
        models; ``position_ids`` default to the chunk's positions. A cache gets this chunk's keys and values.
        ``cache_position`` [T] (static caches only) says where the chunk goes, and whoever gives it also
        advances the cache (``cache.advance``): a compiled step then reads no Python-side length, so one
        graph serves every step. Without it the chunk follows what the cache holds.
        """
        B, T = input_ids.shape
        placed = cache_position is not None
        if placed and not (cache is not None and cache.static):
            raise ValueError("cache_position needs a static cache (new_cache(..., static=True))")
        if not placed:
            past = self._cached_positions(T, cache)
            cache_position = torch.arange(past, past + T, device=input_ids.device)
        if position_ids is None:
            position_ids = cache_position.expand(B, T)
        x = self.wte(input_ids)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.config.n_embd // self.config.n_head, self.config.rope_theta)
        x = self.drop(x)
        mask = self._attention_mask(attention_mask, cache, cache_position, B, T)
        for block in self.blocks:
            x = block(x, rope, mask, cache, cache_position)
        if cache is not None and not placed:
            cache.advance(T)
        x = self.norm_f(x)
        logits = self.lm_head(x if self.readout_multiplier is None else x * self.readout_multiplier)
        return CausalLMOutput(logits=logits, cache=cache, hidden=x if output_hidden else None)

    def _cached_positions(self, T: int, cache: KVCache | None) -> int:
        """Positions the cache already holds; an error if T more do not fit the context or the cache."""
        past = cache.get_seq_length() if cache is not None else 0
        limit = min(self.config.block_size, cache.max_len) if cache is not None else self.config.block_size
        if past + T > limit:
            what = "block_size" if limit == self.config.block_size else "the KV cache's length"
            raise ValueError(f"sequence length {past + T} exceeds {what}={limit}")
        return past

    @staticmethod
    def _attention_mask(attention_mask, cache, cache_position, B: int, T: int) -> torch.Tensor | None:
        """None in training (SDPA's causal flash kernel); over the whole buffer of a static cache; over the
        filled prefix of a dynamic one when padding or a multi-token chunk after a prefix needs it."""
        if cache is not None and cache.static:
            return static_decoding_mask(attention_mask, cache_position, cache.max_len)
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None or (cache is not None and T > 1 and past > 0):
            return decoding_mask(attention_mask, past, T, B, cache_position.device)
        return None

    def to_config_dict(self) -> dict:
        return asdict(self.config)


def decoding_mask(attention_mask, past: int, T: int, B: int, device) -> torch.Tensor:
    """Boolean [B, 1, T, past + T] mask: causal over the cache, padded keys hidden.

    Each query may always see itself, so rows of left padding never become all-masked (NaN).
    """
    q_pos = torch.arange(past, past + T, device=device)[:, None]
    k_pos = torch.arange(past + T, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None].expand(B, 1, T, past + T)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
    return allowed | (k_pos == q_pos)[None, None]


def static_decoding_mask(attention_mask, cache_position: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean [B or 1, 1, T, max_len] mask over a whole static cache: each query sees the written keys
    up to its own position; with ``attention_mask`` ([B, <= max_len], 1 = real token; missing columns
    count as real) padded keys are hidden, but each query always sees itself."""
    k_pos = torch.arange(max_len, device=cache_position.device)
    allowed = k_pos <= cache_position[:, None]  # [T, max_len]
    if attention_mask is None:
        return allowed[None, None]
    real = F.pad(attention_mask.bool(), (0, max_len - attention_mask.shape[1]), value=True)
    return ((allowed & real[:, None, :]) | (k_pos == cache_position[:, None]))[:, None]
