"""Checks that need built objects, run after every object of a run is built and before any work (no data
prepared, no weights drawn, nothing written): the last place a mistake is refused in one line.

Each object is built once. The model is built on the meta device (shapes, no memory), checked against the
memory it will train in, then given its memory and weights by :func:`materialize`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lmlab.arguments import unknown_key
from lmlab.config.resources import check_training_memory, vocab_size_of
from lmlab.config.rules import check_block_fits_context
from lmlab.errors import ArgumentError, InputError, under
from lmlab.spec import same_tokenizer, tokenizer_spec

if TYPE_CHECKING:  # Lightning is the caller's: this module only reads the objects it built
    import lightning as L


def check_strategy(strategy: str) -> None:
    """``strategy`` names a Lightning strategy (before the Trainer is built, which would fail less clearly)."""
    from lightning.pytorch.strategies import StrategyRegistry

    known = ["auto", *StrategyRegistry.available_strategies()]
    if isinstance(strategy, str) and strategy not in known:
        hint = str(unknown_key(strategy, None, known)).split("unknown key; ", 1)[1]
        raise ArgumentError("strategy", strategy, f"not a Lightning strategy; {hint}")


def check_run(model: nn.Module, datamodule: L.LightningDataModule, loss: nn.Module, callbacks: dict,
              trainer: L.Trainer) -> None:
    """Everything about the run that needs its objects, each error under its config key (what a resume may
    change: :mod:`lmlab.config.resume`)."""
    with under("data"):
        datamodule.check_inputs()
    check_tokenizer_fits(model, datamodule)
    check_block_fits_context(model.max_seq_len, datamodule.block_size)  # the built model's: init_from's folder fixes it
    sharded = trainer.num_devices if "FSDP" in type(trainer.strategy).__name__ else 1
    check_training_memory(model, datamodule.batch_size, datamodule.block_size, trainer.strategy.root_device,
                          sharded)
    check_teacher(loss, model)
    for name, callback in callbacks.items():
        if hasattr(callback, "check_fit"):
            with under(f"callbacks.{name}"):
                callback.check_fit(trainer, model, datamodule)


def check_tokenizer_fits(model: nn.Module, datamodule: L.LightningDataModule) -> None:
    """A pretrained tokenizer (``data.tokenizer_from``) gives ids the model's embedding must index."""
    if getattr(datamodule, "tokenizer_from", None) is None:
        return
    n_ids, vocab = len(datamodule.prepare_tokenizer()), vocab_size_of(model)
    if n_ids > vocab:
        raise InputError(f"data.tokenizer_from={datamodule.tokenizer_from}: its tokenizer has {n_ids} ids, more "
                         f"than model.vocab_size={vocab}; set data.vocab_size (model.vocab_size follows it) to at "
                         f"least {n_ids}, or model.init_from to the same folder")


def materialize(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A model built on the meta device, given memory on ``device`` and its initial weights."""
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)
        model.init_weights()
    return model


def check_teacher(loss: nn.Module, model: nn.Module) -> None:
    """A teacher's logits must index the student's vocabulary."""
    teacher = getattr(loss, "teacher", None)
    if teacher is None:
        return
    vocab, teacher_vocab = model.config.vocab_size, teacher.config.vocab_size
    if vocab != teacher_vocab:
        raise InputError(f"loss.teacher: was trained with a different tokenizer: its {teacher_vocab} output logits do "
                         f"not match this model's {vocab} (data.vocab_size and data.corpus must match the teacher's "
                         "run)")


def check_tokenizers(loss: nn.Module, callbacks: dict, model: nn.Module, tokenizer) -> None:
    """A teacher and each decoding draft must share the data's tokenizer, or their logits index other tokens
    (known once the data's tokenizer exists; before training starts)."""
    teacher_tokenizer = getattr(loss, "teacher_tokenizer", None)
    if teacher_tokenizer is not None and not same_tokenizer(tokenizer_spec(teacher_tokenizer),
                                                            tokenizer_spec(tokenizer)):
        raise InputError("loss.teacher: was trained with a different tokenizer than this run's data "
                         "(data.corpus and data.vocab_size must match the teacher's run)")
    for name, callback in callbacks.items():
        if hasattr(callback, "check_tokenizer"):
            with under(f"callbacks.{name}"):
                callback.check_tokenizer(model, tokenizer)


def check_dropout(model: nn.Module, datamodule: L.LightningDataModule) -> None:
    """SimCSE's two views of a text differ only by dropout: the model must have some (a materialized model)."""
    if getattr(datamodule, "pairs", None) == "simcse" and not dropout_differs(model):
        raise InputError("data.pairs=simcse needs dropout (the two views of a text differ only by it): "
                         "set model.dropout > 0, e.g. model.dropout=0.1 (HF models: their dropout fields)")


@torch.no_grad()
def dropout_differs(model: nn.Module) -> bool:
    """Whether two training-mode forward passes of one input differ."""
    was_training = model.training
    model.train()
    ids = torch.zeros(1, 4, dtype=torch.long)
    first, second = (model(ids, output_hidden=True).hidden for _ in range(2))
    model.train(was_training)
    return not torch.equal(first, second)
