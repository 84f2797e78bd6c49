"""lmlab's own GPT: one readable file in the spirit of nanoGPT.

Options cover the GPT-2 and Llama families: learned or rotary positions, LayerNorm or RMSNorm,
GELU-style or SwiGLU MLPs, grouped-query attention, tied embeddings and dropout. Attention runs
through ``scaled_dot_product_attention``; training passes no mask (``is_causal=True``) so the
flash kernel can run, decoding passes a cache and, for padded batches, an attention mask.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.arguments import ArgumentError, checked
from lmlab.errors import InputError
from lmlab.models.activations import get_activation
from lmlab.models.cache import KVCache
from lmlab.models.output import CausalLMOutput

log = logging.getLogger(__name__)


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: same as n_head; fewer: grouped-query attention
    n_embd: int = 128
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    position: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float | None = None  # None: 1e-5 for LayerNorm (torch's default), 1e-6 for RMSNorm
    mlp: str = "standard"  # standard | swiglu
    activation: str = "gelu"
    tie_embeddings: bool = True

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        choices = {"position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("standard", "swiglu")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"model.{field}={getattr(self, field)!r}; allowed: {', '.join(allowed)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} must be divisible by model.n_kv_head={self.n_kv_head}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("model.position=rope needs an even head dimension (n_embd / n_head)")


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
        self.act = get_activation("silu" if self.gated else config.activation)

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


def _init_from_rules(init_from: str | None) -> None:
    """The folder must hold a model lmlab's GPT computes: read its config.json (cheap) before any work."""
    if init_from is None:
        return
    from lmlab.export.reader import pretrained_architecture

    try:
        pretrained_architecture(init_from)
    except InputError as e:
        raise ArgumentError("init_from", init_from, str(e)) from None


class GPT(nn.Module):
    """Decoder-only transformer. ``GPT(**kwargs)`` takes the fields of :class:`GPTConfig`.

    ``init_from``: a Hugging Face folder of a Llama or GPT-2 model (``lmlab export`` writes one). Its
    config.json fixes the architecture and its weights initialise the model. The folder wins over the
    architecture arguments given with it (one warning lists those that differ): a model file has one
    description, and weights that fit no other; ``dropout``, which the weights do not fix, stays the caller's.
    The model trains and decodes with the folder's tokenizer (a data module's ``tokenizer_from``), not one
    trained on the corpus. Checkpoints store the resulting architecture, not the folder: they rebuild without it.
    """

    @checked(rules=_init_from_rules)
    def __init__(self, init_from: str | None = None, **kwargs):
        super().__init__()
        if init_from is not None:
            kwargs = _pretrained_arguments(init_from, kwargs)
        self.config = config = GPTConfig(**kwargs)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if init_from is not None:
            from lmlab.export.reader import load_pretrained_weights

            load_pretrained_weights(self, init_from)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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

        ``attention_mask`` ([B, past + T], 1 = real token) covers the cached prefix too, as in
        Hugging Face models; ``position_ids`` default to past + arange(T). Passing a cache
        appends this chunk's keys and values to it. With a static cache, ``cache_position`` [T]
        says where the chunk goes; whoever passes it also advances the cache (``cache.advance``), so
        that a compiled step reads no Python-side length (one graph for every step).
        """
        B, T = input_ids.shape
        positioned = cache_position is not None
        if positioned and not (cache is not None and cache.static):
            raise ValueError("cache_position needs a static cache (model.new_cache(..., static=True))")
        if not positioned:
            past = cache.get_seq_length() if cache is not None else 0
            limit = min(self.config.block_size, cache.max_len) if cache is not None else self.config.block_size
            if past + T > limit:
                what = "model.block_size" if limit == self.config.block_size else "the KV cache's length"
                raise ValueError(f"sequence length {past + T} exceeds {what}={limit}")
            if cache is not None and cache.static:
                cache_position = torch.arange(past, past + T, device=input_ids.device)
        if position_ids is None:
            position_ids = (cache_position if cache_position is not None
                            else torch.arange(past, past + T, device=input_ids.device)).expand(B, T)
        x = self.wte(input_ids)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.config.n_embd // self.config.n_head, self.config.rope_theta)
        x = self.drop(x)
        mask = None
        if cache is not None and cache.static:
            mask = static_decoding_mask(attention_mask, cache_position, cache.max_len)
        elif attention_mask is not None or (cache is not None and T > 1 and past > 0):
            mask = decoding_mask(attention_mask, past, T, B, input_ids.device)
        for block in self.blocks:
            x = block(x, rope, mask, cache, cache_position)
        if cache is not None and not positioned:
            cache.advance(T)
        x = self.norm_f(x)
        return CausalLMOutput(logits=self.lm_head(x), cache=cache, hidden=x if output_hidden else None)

    def to_config_dict(self) -> dict:
        return asdict(self.config)


def _pretrained_arguments(folder: str, given: dict) -> dict:
    """The folder's architecture over the given arguments (differences logged in one line), dropout the caller's."""
    from lmlab.export.architecture import NOT_ARCHITECTURE
    from lmlab.export.reader import architecture_differences, pretrained_architecture

    pretrained = pretrained_architecture(folder)
    differences = architecture_differences(given, pretrained)
    if differences:
        listed = ", ".join(f"{k}={theirs!r} (not {ours!r})" for k, (ours, theirs) in differences.items())
        log.warning("init_from=%s: its config.json sets %s", folder, listed)
    kept = {k: given[k] for k in NOT_ARCHITECTURE if k in given}
    return {**given, **pretrained, **kept}


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
