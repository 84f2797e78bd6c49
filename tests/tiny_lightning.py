"""A tiny real LightningModule (lmlab GPT on Markov-chain tokens) and a short CPU fit, shared by the
callback tests (stability, throughput, report)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from helpers import one_thread
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lmlab.callbacks.forward_stats import LogitStats
from lmlab.models import GPT
from lmlab.optim import param_groups

VOCAB, BLOCK = 64, 16


def markov_sequences(n: int, seed: int = 0) -> torch.Tensor:
    """Sequences from a random Markov chain with 4 likely successors per token: a learnable
    corpus with an entropy floor, so the loss falls and then stays noisy like real text."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, VOCAB, (VOCAB, 4), generator=g)
    seqs = torch.empty(n, BLOCK + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(1, BLOCK + 1):
        pick = torch.randint(0, 4, (n,), generator=g)
        seqs[:, t] = successors[seqs[:, t - 1], pick]
    return seqs


class TinyLM(LogitStats, L.LightningModule):
    """Follows LitLM's contract: batch [B, T+1], `train/loss`, `val/loss`, `val/ppl`, and forward
    statistics through `ForwardStatsSource` (the LogitStats mixin). `inject` = {step: "nan" | "spike"}
    corrupts the logits of that optimizer step (on `inject_rank` only, when given)."""

    def __init__(
        self,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        inject: dict | None = None,
        inject_rank: int | None = None,
    ):
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
        self.optimizer_name, self.lr = optimizer, lr
        self.inject, self.inject_rank = inject or {}, inject_rank
        self.last_logits: torch.Tensor | None = None
        self.recorded: dict[int, dict] = {}  # step -> independent measurements (see Recorder)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = self.model(inputs).logits
        kind = self.inject.get(self.global_step)
        if kind and (self.inject_rank is None or self.inject_rank == self.global_rank):
            logits = logits * (math.nan if kind == "nan" else 300.0)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.record_logits(logits)
        self.last_logits = logits.detach()
        self.log("train/loss", loss, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        self.log("val/loss", loss)
        self.log("val/ppl", loss.exp())

    def configure_optimizers(self):
        groups = param_groups(self.model, weight_decay=0.1)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        if self.optimizer_name == "skippable_sgd":
            return SkippableSGD(groups, lr=self.lr)
        return torch.optim.SGD(groups, lr=self.lr)


class SkippableSGD(torch.optim.SGD):
    """Plain SGD that honours the `skip_step` contract of lmlab optimizers with tensor ops only."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.skip_step = torch.tensor(False)

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        params = [p for g in self.param_groups for p in g["params"]]
        before = [p.clone() for p in params]
        super().step()
        for p, old in zip(params, before, strict=True):
            p.copy_(torch.where(self.skip_step, old, p))
        return loss


def fit_tiny(
    run_dir: Path,
    callbacks: list,
    steps: int,
    module: TinyLM | None = None,
    n_seqs: int = 256,
    val: bool = False,
    ckpt_path: str | None = None,
    **trainer_kwargs,
) -> tuple[L.Trainer, TinyLM]:
    """A real short CPU run logging to `<run_dir>/metrics.csv`, as lmlab's train CLI does."""
    module = module or TinyLM()
    data = markov_sequences(n_seqs)
    train = DataLoader(data, batch_size=8)  # (a seeded generator here breaks ddp_spawn pickling)
    val_loader = DataLoader(markov_sequences(32, seed=7), batch_size=16) if val else None
    kwargs = dict(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2 if val else 0,
    )
    kwargs.update(trainer_kwargs)
    kwargs.setdefault("logger", CSVLogger(run_dir, name="", version=""))
    trainer = L.Trainer(callbacks=callbacks, **kwargs)
    with one_thread():
        trainer.fit(module, train, val_loader, ckpt_path=ckpt_path)
    return trainer, module

