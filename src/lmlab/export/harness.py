"""Evaluate an exported model with lm-evaluation-harness (``lm_eval --model hf``) on a local task, and
compute the same figure with lmlab's own GPT to check both.

The local task is rolling log-likelihood (``loglikelihood_rolling``, as lm-eval's wikitext) over documents
written to a JSON-lines file beside its YAML, so nothing is downloaded. lm-eval scores each document from a
prefix token (BOS, which is lmlab's EOS: documents are separated by it in training) in windows of the
model's context, and reports per word and per byte, not per token:

    word_perplexity = exp(NLL / words)    words = sum over documents of len(re.split(r"\\s+", doc))
    byte_perplexity = exp(NLL / bytes)    bytes = UTF-8 bytes
    bits_per_byte   = NLL / bytes / ln 2

with NLL the summed negative log-likelihood (nats) of every document token. lmlab's perplexity is per token,
exp(NLL / tokens), so token_perplexity = byte_perplexity ** (bytes / tokens). :func:`rolling_nll` computes
NLL, tokens, bytes and words with lmlab's GPT over the same windows: the two must agree to float rounding.
lmlab's logged ``val/ppl`` is per token too but over packed blocks of the validation split (documents joined
by EOS, the EOS predictions included, context restarting at each block), so it is close to the per-document
figure, not equal.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import InputError

TASK_NAME = "lmlab_val"
INSTALL = 'pip install "lm-eval[hf]>=0.4.13"'
METRICS = {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
           "bits_per_byte": "bits_per_byte"}  # lm-eval's metric -> its aggregation


@dataclass(frozen=True)
class RollingNLL:
    """Summed negative log-likelihood (nats) of every token of some documents, and their sizes in three units."""

    nll: float
    tokens: int
    bytes: int
    words: int

    def perplexity(self, unit: str) -> float:
        return math.exp(self.nll / getattr(self, unit))


def count_words(text: str) -> int:
    """lm-eval's word count for rolling log-likelihood tasks (a trailing newline counts one empty word)."""
    return len(re.split(r"\s+", text))


def rolling_windows(tokens: list[int], prefix: int, max_length: int):
    """(inputs, number of trailing positions scored) covering every token once, as lm-eval's rolling windows:
    the first window predicts up to ``max_length`` tokens from ``prefix``; each later one predicts the next up
    to ``max_length`` tokens with the ``max_length`` tokens before each as inputs."""
    n = len(tokens)
    first = min(max_length, n)
    if n:
        yield [prefix, *tokens[: first - 1]], tokens[:first]
    done = first
    while done < n:
        count = min(n - done, max_length)
        end = done + count
        yield tokens[end - max_length - 1: end - 1], tokens[end - count: end]
        done = end


@torch.no_grad()
def rolling_nll(model, tokenizer, documents: list[str], max_length: int | None = None) -> RollingNLL:
    """lmlab's side of the check: every document's tokens scored from the tokenizer's BOS (else EOS)."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    max_length = max_length or model.max_seq_len
    device = next(model.parameters()).device
    nll, n_tokens = 0.0, 0
    for text in documents:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        for inputs, targets in rolling_windows(tokens, prefix, max_length):
            logits = model(torch.tensor([inputs], device=device)).logits[0, -len(targets):].float()
            nll += F.cross_entropy(logits, torch.tensor(targets, device=device), reduction="sum").item()
        n_tokens += len(tokens)
    return RollingNLL(nll, n_tokens, sum(len(d.encode()) for d in documents), sum(count_words(d) for d in documents))


def validation_documents(datamodule, limit: int | None = None) -> list[str]:
    """The texts of a run's held-out documents, decoded from its packed validation tokens (each ends in EOS;
    byte-level BPE decodes exactly), in split order."""
    datamodule.setup()
    packed = datamodule.packed
    tokens = np.asarray(packed.tokens()[packed.val_start:])
    ends = np.flatnonzero(tokens == packed.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    texts = [datamodule.tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)
             if e > s][:limit]
    return texts


def write_task(folder: str | Path, documents: list[str], name: str = TASK_NAME) -> Path:
    """A local lm-eval task: ``name``.jsonl (one {"text": ...} per document) and ``name``.yaml reading it, in
    ``folder`` (pass it to lm-eval as ``--include_path``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    metrics = [f"  - metric: {m}\n    aggregation: {a}\n    higher_is_better: false\n" for m, a in METRICS.items()]
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        f"metric_list:\n{''.join(metrics)}"
        "metadata:\n  version: 1.0\n")
    return folder


def run_lm_eval(hf_folder: str | Path, tasks: list[str], include_path: str | Path | None = None,
                batch_size: int = 8, device: str = "cpu", dtype: str = "float32") -> dict:
    """lm-eval's results dict (``results[task][metric + ",none"]``) for the exported folder, with
    ``--model hf`` as on the command line (``lm_eval --model hf --model_args pretrained=DIR ...``)."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise InputError(f"lm-evaluation-harness is not installed ({e.name}); {INSTALL}") from None
    local = {p.stem for p in Path(include_path).glob("*.yaml")} if include_path else set()
    # lm-eval indexes its thousands of own task files unless told that only local tasks are wanted
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=not set(tasks) <= local)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InputError(f"--tasks: lm-eval knows no task {', '.join(unknown)}")
    out = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(hf_folder), "dtype": dtype, "trust_remote_code": False},
        tasks=tasks, task_manager=manager, batch_size=batch_size, device=device)
    return out["results"]
