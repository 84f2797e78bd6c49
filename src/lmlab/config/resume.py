"""The resume contract: what a checkpoint records of its run, and what a resume may change.

A resumed run must be the run its config.yaml describes. :func:`run_settings` is what every checkpoint records
(``LitLM`` stores it in its ``lmlab`` entry); :func:`check_resume` compares it with the resuming config before
anything is written and refuses in one line naming each change (key: checkpoint -> config) that would make the
run something else, or returns the changes the run follows from the resumed step (``train.py`` says so in one
line and ``run.json`` records them with that start):

Refused (each names why):

- the corpus (its fingerprint: files, sizes, times), the tokenizer, and every other data setting (val_fraction,
  split_seed, dedup, decontaminate, block_size, seed, vocab_size, the pair settings): the weights index this
  tokenizer's ids, and the sampler resumes at a position of this token stream in this shuffle order;
- data.global_batch_size, or data.batch_size x world size: the sampler resumes each rank at (batches trained) x
  data.batch_size of its shard, so another count per pass moves that position (samples repeated or skipped).
  Changing data.batch_size and the world size together, their product and the global batch kept, is followed:
  the same samples per step in the same order;
- the model, every field but dropout (followed: no weight depends on it): the weights have its shapes;
- the optimizer's class (optimizer._target_, optimizer.cls) or its state's layout: the state is that class's;
- the loss's or the task's class: another objective under the same metric names;
- trainer.max_steps before the checkpoint's step (nothing would train), and any change to a scheduler that is
  not lmlab's (its restored state overrides its settings).

Followed from the resumed step, with one line: trainer.max_steps and lmlab's schedules, class and settings
(their state is the step alone, so the LR is this config's schedule at that step: lmlab.optim.schedules);
optimizer settings (lr, weight_decay, betas, ...: set again over the restored state, LitLM.on_train_start);
loss and task settings, trainer.precision and gradient clipping (how later steps train, nothing the
checkpoint holds).

Allowed silently: everything else (logger, callbacks, decoding, samples, compile, data.num_workers,
data.cache_dir, paths): it changes nothing trained.

Checkpoints written before run settings were recorded resume with the checks their contents allow (the model,
the tokenizer, the optimizer state's layout) and a line saying what could not be checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from lmlab.config.rules import world_size
from lmlab.errors import InputError, show
from lmlab.optim.schedules import MultiplierSchedule
from lmlab.spec import model_spec, tokenizer_fingerprint, tokenizer_spec

WORLD = "world size (trainer.devices x trainer.num_nodes)"
# data keys that decide nothing trained, or that are compared by what they give (the corpus by its fingerprint,
# tokenizer_from by the tokenizer) or by the batch rule
DATA_KEYS_NOT_COMPARED = {"num_workers", "cache_dir", "corpus", "tokenizer_from", "batch_size", "global_batch_size"}
FOLLOWED_TRAINER_KEYS = ("max_steps", "precision", "gradient_clip_val", "gradient_clip_algorithm")
FOLLOWED_MODEL_FIELDS = {"dropout"}
CLASS_KEYS = {"_target_", "cls"}  # a node's class (torch_adamw's optimizer class is its `cls`)
# Hugging Face config fields that describe the file, not the model
HF_PROVENANCE_FIELDS = {"transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype"}
REMEDY = "resume with the settings the checkpoint was trained with, or start a new run in a new directory"


def run_settings(config: dict, datamodule) -> dict[str, Any]:
    """What a checkpoint records of its run: the resolved config's values of the keys the contract compares, and
    the corpus's description and fingerprint (files, sizes, times). Plain values only (read with weights_only)."""
    data, trainer = config["data"], config["trainer"]
    corpus = getattr(datamodule, "corpus", None)
    corpus = f"{corpus!r} #{corpus.fingerprint()}" if corpus is not None else None
    world = world_size(trainer.get("devices", 1), trainer.get("num_nodes", 1), trainer.get("accelerator", "auto"))
    settings = {key: value for key, value in flatten(data, "data").items()
                if key.split(".")[1] not in DATA_KEYS_NOT_COMPARED}
    settings |= {"data.corpus": corpus, "data.batch_size": data["batch_size"], WORLD: world,
                 "data.global_batch_size": data["batch_size"] * world * trainer.get("accumulate_grad_batches", 1)}
    for group in ("optimizer", "sched", "loss", "task"):
        settings |= flatten(config.get(group), group)
    return settings | {f"trainer.{key}": trainer.get(key) for key in FOLLOWED_TRAINER_KEYS}


def flatten(node: Any, prefix: str) -> dict[str, Any]:
    """A config node as ``{dotted key: leaf}`` (lists are leaves; Hydra's ``_partial_`` is no setting)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        if key != "_partial_":
            flat |= flatten(value, f"{prefix}.{key}")
    return flat


def check_resume(path: str, checkpoint: dict, model: nn.Module, settings: dict, optimizer_factory: Callable,
                 schedule: Callable | None, tokenizer: Callable[[], Any]) -> list[str]:
    """Refuse a resume whose config changes what the checkpoint was trained with (every such change in one
    line), else return the changes the run follows from the resumed step, as ``key old -> new``.

    ``optimizer_factory`` is called on ``model`` (on the meta device: no memory) to compare the optimizer state's
    layout; ``schedule`` is the schedule's factory; ``tokenizer()`` prepares this config's tokenizer (cached, or
    trained into the cache) and is called only when nothing else is refused."""
    meta = checkpoint.get("lmlab")
    if not isinstance(meta, dict):
        raise InputError(f"ckpt_path={path}: was not written by lmlab (no 'lmlab' entry), so it cannot be resumed; "
                         "model.init_from starts a run from a Hugging Face model's weights")
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise InputError(f"ckpt_path={path}: holds weights only (no optimizer or loop state), so it cannot be "
                         "resumed; resume a last.ckpt, or start a new run from the weights with model.init_from")
    step, recorded = int(checkpoint.get("global_step", 0)), meta.get("run_settings")
    refused, followed = model_changes(meta.get("model") or {}, model)
    if recorded is not None:
        more_refused, more_followed = settings_changes(recorded, settings, schedule_follows(schedule))
        refused, followed = refused + more_refused, followed + more_followed
    if not any(change.startswith(("optimizer._target_", "optimizer.cls")) for change in refused):
        refused += optimizer_state_changes(checkpoint["optimizer_states"], optimizer_factory(model),
                                           by_settings=recorded is None)
    max_steps = settings.get("trainer.max_steps")
    if max_steps is not None and 0 < max_steps < step:
        refused.append(f"trainer.max_steps={max_steps} is before the checkpoint's step {step}")
    elif max_steps == step:
        followed.append(f"trainer.max_steps={max_steps} is the checkpoint's step: nothing is left to train")
    if not refused and meta.get("tokenizer") is not None:
        theirs, ours = tokenizer_fingerprint(meta["tokenizer"]), tokenizer_fingerprint(tokenizer_spec(tokenizer()))
        if theirs != ours:
            refused.append(f"data.tokenizer #{theirs} -> #{ours} (the weights index the checkpoint's token ids)")
    if refused:
        raise InputError(f"ckpt_path={path}: this config changes what the checkpoint at step {step} was trained "
                         f"with (checkpoint -> config): {'; '.join(refused)}; {REMEDY}")
    if recorded is None:
        followed.append("(written before checkpoints recorded their run settings: the data, batch and schedule "
                        "settings could not be compared)")
    return followed


def model_changes(spec: dict, model: nn.Module) -> tuple[list[str], list[str]]:
    """(refused, followed) differences between the checkpoint's model spec and this config's model."""
    ours = model_spec(model)
    if spec.get("kind") != ours["kind"]:
        return [f"model kind {show(spec.get('kind'))} -> {show(ours['kind'])}"], []
    theirs, ours = spec.get("config", {}), ours["config"]
    keys = sorted(k for k in set(theirs) | set(ours) if k not in HF_PROVENANCE_FIELDS and theirs.get(k) != ours.get(k))
    changes = {k: f"model.{k} {show(theirs.get(k))} -> {show(ours.get(k))}" for k in keys}
    return ([text for k, text in changes.items() if k not in FOLLOWED_MODEL_FIELDS],
            [text for k, text in changes.items() if k in FOLLOWED_MODEL_FIELDS])


def settings_changes(recorded: dict, settings: dict, schedule_followed: bool) -> tuple[list[str], list[str]]:
    """(refused, followed) differences between recorded run settings and this config's, by the contract's table."""
    changed = [k for k in dict.fromkeys([*recorded, *settings]) if recorded.get(k) != settings.get(k)]
    text = {k: f"{k} {show(recorded.get(k))} -> {show(settings.get(k))}" for k in changed}
    refused, followed = [], []
    for key in changed:
        group, _, name = key.partition(".")
        if key in ("data.batch_size", WORLD):
            same_pass = per_pass(recorded) == per_pass(settings)
            (followed if same_pass else refused).append(text[key] + ("" if same_pass else " (moves the data position)"))
        elif group == "sched":
            (followed if schedule_followed else refused).append(text[key])
        elif group == "data" or name in CLASS_KEYS:
            refused.append(text[key])
        else:
            followed.append(text[key])
    return refused, followed


def per_pass(settings: dict) -> int:
    """Sequences per forward pass over all ranks: what the sampler's resume position is counted in."""
    return settings.get("data.batch_size", 0) * settings.get(WORLD, 0)


def schedule_follows(schedule: Callable | None) -> bool:
    """Whether a schedule's factory makes one of lmlab's schedules, whose state is its step alone (so a resumed
    run follows its settings); no schedule follows trivially."""
    cls = getattr(schedule, "func", schedule)
    return schedule is None or isinstance(cls, type) and issubclass(cls, MultiplierSchedule)


def optimizer_state_changes(states: list[dict], optimizer, by_settings: bool) -> list[str]:
    """The checkpoint's optimizer state against this config's optimizer: its parameter groups' sizes and, with
    ``by_settings`` (a checkpoint that does not record its optimizer's class), the names of their settings, which
    differ between optimizer classes."""
    if not states:
        return []
    theirs, ours = states[0].get("param_groups", []), optimizer.param_groups
    sizes = [len(g["params"]) for g in theirs], [len(g["params"]) for g in ours]
    if sizes[0] != sizes[1]:
        return [f"optimizer parameter groups of {sizes[0]} -> {sizes[1]} tensors"]
    if not by_settings or not theirs:
        return []
    keys = [sorted(set(g) - {"params", "initial_lr"}) for g in (theirs[0], ours[0])]
    if keys[0] != keys[1]:
        return [f"optimizer state of an optimizer with settings {', '.join(keys[0])} -> {type(optimizer).__name__} "
                f"(settings {', '.join(keys[1])})"]
    return []
