"""The plain side of benchmarks/recipe.py: nanoGPT's model and training loop, in plain PyTorch, on a text file.

    python benchmarks/recipe_plain.py --corpus <file.txt> --out <result.json> [--max-iters 2000 ...]

A transcription of nanoGPT's model.py (GPT-2 blocks: LayerNorm without bias, causal self-attention through
scaled_dot_product_attention, a 4x GELU MLP, dropout, tied embeddings, N(0, 0.02) weights with the residual
projections scaled by 1/sqrt(2 n_layer)) and train.py (random windows of the training split per batch, AdamW
with weight decay on matrices only, linear warmup and cosine decay of the learning rate, gradient clipping,
the loss read every ``log_interval`` iterations, a checkpoint of model and optimizer written beside ``--out``
whenever the validation loss improves). Two differences, both to do the same work as
`python train.py` does on the same settings: the iterations are ``max_iters`` (nanoGPT's loop runs one more),
and evaluation after every ``eval_interval``-th step is the validation split's loss on its consecutive
windows (at most ``eval_iters`` batches), as lmlab validates, where nanoGPT also estimates the training loss
and evaluates at step 0. Tokens are the file's bytes, the validation split its last ``val_fraction``, as
lmlab's byte-level BPE at its smallest vocabulary (258: 256 bytes and 2 special tokens) cuts a one-file corpus.

Imports torch and numpy only, so its start-up is what a plain script's is. Writes one JSON object to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

STARTED = time.time()

import numpy as np  # noqa: E402 (the start time is read first)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VOCAB_SIZE = 258  # lmlab's byte-level BPE with no merges: 256 bytes and its EOS and pad tokens


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=bias), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=bias), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float, bias: bool):
        super().__init__()
        self.wte = nn.Embedding(VOCAB_SIZE, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, VOCAB_SIZE, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def get_lr(it: int, args) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr at lr_decay_iters, min_lr after."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    if it > args.lr_decay_iters:
        return args.min_lr
    ratio = (it - args.warmup_iters) / (args.lr_decay_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def split(path: str, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The file's bytes, cut where lmlab cuts a one-document corpus (its EOS counted: n + 1 tokens)."""
    data = np.frombuffer(open(path, "rb").read(), dtype=np.uint8)
    cut = min(max(round((len(data) + 1) * (1.0 - val_fraction)), 1), len(data) - 1)
    return data[:cut], data[cut:]


def get_batch(data: np.ndarray, batch_size: int, block_size: int):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


@torch.no_grad()
def validation_loss(model, val: np.ndarray, batch_size: int, block_size: int, max_batches: int) -> float:
    """Token-weighted mean loss over consecutive windows of the validation split (lmlab's TokenBlocks)."""
    model.eval()
    starts = range(0, (len(val) - 1) // block_size * block_size, block_size)
    total, count = 0.0, 0
    for first in range(0, min(len(starts), max_batches * batch_size), batch_size):
        windows = [val[s:s + block_size + 1].astype(np.int64) for s in starts[first:first + batch_size]]
        batch = torch.from_numpy(np.stack(windows))
        n = batch[:, 1:].numel()
        total += model(batch[:, :-1], batch[:, 1:]).item() * n
        count += n
    model.train()
    return total / count


def configure_optimizer(model, args) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    for name, default in dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
                              eval_interval=250, eval_iters=200, log_interval=10, warmup_iters=100,
                              lr_decay_iters=2000, seed=1337).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    for name, default in dict(lr=1e-3, min_lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                              dropout=0.2, val_fraction=0.1).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=default)
    parser.add_argument("--bias", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train, val = split(args.corpus, args.val_fraction)
    model = GPT(args.n_layer, args.n_head, args.n_embd, args.block_size, args.dropout, args.bias)
    optimizer = configure_optimizer(model, args)
    result, best = {"train_loss": {}, "val_loss": {}}, math.inf
    x, y = get_batch(train, args.batch_size, args.block_size)
    for it in range(args.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, args)
        loss = model(x, y)
        x, y = get_batch(train, args.batch_size, args.block_size)
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it == 0:
            result["first_step_done"] = time.time()
        if (it + 1) % args.log_interval == 0:
            result["train_loss"][it + 1] = loss.item()
        if (it + 1) % args.eval_interval == 0:
            val_loss = result["val_loss"][it + 1] = validation_loss(model, val, args.batch_size, args.block_size,
                                                                    args.eval_iters)
            if val_loss < best:
                best = val_loss
                checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it + 1,
                              "best_val_loss": best, "config": vars(args)}
                torch.save(checkpoint, Path(args.out).with_name("ckpt.pt"))
    result.update(started=STARTED, train_end=time.time())
    with open(args.out, "w") as f:
        json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
