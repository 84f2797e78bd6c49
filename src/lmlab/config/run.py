"""The whole run's config: every group's node checked by its ``_target_``'s schema, then the rules that
join groups (the data's blocks fit the model's context, warmup ends before the run does, ...).

Input is the resolved config as plain data (``OmegaConf.to_container(cfg, resolve=True)``); nothing is
built. Every failure is one :class:`~lmlab.errors.InputError` naming the full dotted key.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, model_validator

from lmlab.config import decoding
from lmlab.config.messages import show
from lmlab.config.schema import (
    DECLARED,
    Bool,
    Int,
    NonNegativeInt,
    PositiveInt,
    Schema,
    Str,
    ValidationInfo,
    existing_checkpoint,
    locate,
    schema_for,
    validate,
)
from lmlab.devices import ranks_started_outside
from lmlab.errors import InputError
from lmlab.quantization import MODES

# the module declaring each group's schemas, imported when the group is first checked (generate.py needs
# the decoding schemas only, and so never imports Lightning)
SCHEMA_MODULES = {"data": "data", "model": "models", "trainer": "trainer", "logger": "trainer",
                  "callbacks": "trainer", "loss": "training", "optimizer": "training", "sched": "training",
                  "decoding": "decoding"}
# arguments the code passes to every target of a group (never config keys)
RUNTIME = {
    "optimizer": ("params", "model"),  # the factory is called with the model (lmlab.optim.grouped: `model`)
    "sched": ("optimizer", "last_epoch"),
    "trainer": ("callbacks", "logger", "default_root_dir"),
    "decoding": decoding.RUNTIME,
}
# tokens of each end-of-run sample prompt (cli/train.py's print_samples), at most data.block_size
SAMPLE_PROMPT_TOKENS = 16


class Samples(Schema):
    num_prompts: NonNegativeInt = 3
    max_new_tokens: PositiveInt = 48


class Paths(Schema):
    root_dir: Str
    log_dir: Str
    cache_dir: Str
    output_dir: Str


class TrainSchema(Schema):
    """conf/train.yaml's own keys; each group's node is checked by its target's schema."""

    task_name: Str
    seed: Int
    ckpt_path: Str | None = None
    compile: Bool = False
    optimized_metric: Str
    samples: Samples
    paths: Paths
    data: dict
    model: dict
    loss: dict
    optimizer: dict
    sched: dict | None = None
    trainer: dict
    logger: dict | None = None
    callbacks: dict | None = None
    decoding: dict


class GenerateSchema(Schema):
    """conf/generate.yaml's own keys."""

    ckpt: Str
    prompt: Str | None = None
    prompt_file: Str | None = None
    max_new_tokens: PositiveInt = 64
    seed: Int = 1234
    device: Str = "auto"
    quantize: Literal[MODES] | None = None
    quantize_group_size: PositiveInt | None = None
    decoding: dict

    @model_validator(mode="after")
    def prompts_device_checkpoint(self, info: ValidationInfo) -> GenerateSchema:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError('prompt, prompt_file: give exactly one of prompt="..." or prompt_file=<file with one '
                             "prompt per line>")
        if self.prompt == "":
            raise ValueError("prompt='': is empty; give at least one character to continue from")
        if self.prompt_file is not None and not Path(self.prompt_file).expanduser().is_file():
            raise ValueError(f"prompt_file={self.prompt_file}: does not exist")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device={self.device!r}: must be auto, cpu, cuda, cuda:<index> or mps")
        existing_checkpoint(self.ckpt, "ckpt")
        return self


def check_train_config(cfg: dict, multirun: bool = False) -> dict[str, BaseModel]:
    """Every problem of a training config that needs no data, as one InputError; returns each checked node."""
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    validate(TrainSchema, cfg, "")
    # a group before those that interpolate its keys, so the error names the key the user set
    checked = {group: check_group(group, cfg[group], group)
               for group in ("data", "model", "trainer", "loss", "optimizer", "sched", "logger", "decoding",
                             "callbacks")}
    check_across_groups(cfg, checked, multirun)
    return checked


def check_generate_config(cfg: dict) -> None:
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    validate(GenerateSchema, cfg, "")
    check_group("decoding", cfg["decoding"], "decoding")


def check_group(group: str, node: Any, key: str) -> Any:
    """A group's node (or, for groups that hold several, each named node) checked by its target's schema."""
    importlib.import_module(f"lmlab.config.{SCHEMA_MODULES.get(group, 'trainer')}")
    if node is None:
        return None
    if group in ("logger", "callbacks") or (group == "decoding" and "_target_" not in node):
        return {name: check_node(child, f"{key}.{name}", group) for name, child in node.items() if child is not None}
    return check_node(node, key, group)


def check_node(node: Any, key: str, group: str) -> BaseModel:
    if not isinstance(node, dict) or "_target_" not in node:
        raise InputError(f"{key}={show(node)}: must be a config node with a _target_ (a class or function to build)")
    target = locate(node["_target_"], f"{key}._target_")
    explicit = DECLARED.get(target)
    nested_groups = explicit.nested_groups if explicit else {}
    values = dict(node)
    for name, child in node.items():
        if name in nested_groups:
            check_group(nested_groups[name], child, f"{key}.{name}")
        elif isinstance(child, dict) and "_target_" in child:
            check_node(child, f"{key}.{name}", name)
            if explicit is None or name not in explicit.model_fields:
                del values[name]  # built by Hydra before the call: not a plain value of the signature's type
    return validate(schema_for(target, RUNTIME.get(group, ())), values, f"{key}.")


def check_across_groups(cfg: dict, checked: dict, multirun: bool) -> None:
    """Rules that join groups; each message names every key involved."""
    trainer_cfg, data_cfg = checked["trainer"], checked["data"]
    fast_dev_run = bool(trainer_cfg.fast_dev_run)
    max_steps = trainer_cfg.max_steps
    warmup = getattr(checked["sched"], "warmup_steps", None)
    if warmup is not None and not fast_dev_run and warmup >= max_steps:
        raise InputError(f"sched.warmup_steps={warmup}: must be less than the run's trainer.max_steps={max_steps}")
    if multirun and trainer_cfg.strategy == "ddp" and not ranks_started_outside():
        raise InputError("trainer.strategy=ddp re-executes the command line, which would re-run the whole "
                         "multirun; use trainer=ddp_spawn in sweeps (or a SLURM launcher, hydra/launcher=slurm_gpu, "
                         "whose srun starts the ranks)")
    for name in ("stability", "throughput"):
        node = (checked["callbacks"] or {}).get(name)
        every, base = getattr(node, "log_every_n_steps", None), trainer_cfg.log_every_n_steps
        if every and base and every % base:
            raise InputError(f"callbacks.{name}.log_every_n_steps={every}: must be a multiple of "
                             f"trainer.log_every_n_steps={base} (Lightning writes logs only on those steps)")
    check_model_fits_data(checked["model"], data_cfg, cfg)
    check_loss_fits_data(cfg)


def check_model_fits_data(model: BaseModel, data_cfg: BaseModel, cfg: dict) -> None:
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and vocab < data_cfg.vocab_size:
        raise InputError(f"model.vocab_size={vocab}: must be at least data.vocab_size={data_cfg.vocab_size} "
                         "(the tokenizer's ids index the model's embedding)")
    check_block_fits_context(model, data_cfg.block_size)
    context = getattr(model, "context", None)
    if context is None:
        return
    decoder = (cfg.get("callbacks") or {}).get("decoding")
    if decoder:
        prompt, new = decoder.get("prompt_tokens", 16), decoder.get("max_new_tokens", 32)
        if prompt > data_cfg.block_size:
            raise InputError(f"callbacks.decoding.prompt_tokens={prompt}: must be at most data.block_size="
                             f"{data_cfg.block_size} (prompts are cut from validation blocks)")
        if prompt + new > context:
            raise InputError(f"callbacks.decoding.max_new_tokens={new}: callbacks.decoding.prompt_tokens={prompt} + "
                             f"max_new_tokens must be at most the model's context ({context})")
    samples = cfg["samples"]
    prompt = min(SAMPLE_PROMPT_TOKENS, data_cfg.block_size)
    if samples["num_prompts"] and prompt + samples["max_new_tokens"] > context:
        raise InputError(f"samples.max_new_tokens={samples['max_new_tokens']}: {prompt} prompt tokens + "
                         f"samples.max_new_tokens must be at most the model's context ({context})")


def check_block_fits_context(model: BaseModel, block_size: int) -> None:
    context = getattr(model, "context", None)
    if context is not None and block_size > context:
        raise InputError(f"data.block_size={block_size}: must be at most the model's context ({context}: "
                         "model.block_size or model.max_position_embeddings)")


def check_loss_fits_data(cfg: dict) -> None:
    """A contrastive loss trains on pair batches (data=code_pairs), and only it does."""
    from lmlab.data import CodePairsDataModule
    from lmlab.losses import InfoNCELoss

    pairs = locate(cfg["data"]["_target_"], "data._target_")
    loss = locate(cfg["loss"]["_target_"], "loss._target_")
    if isinstance(pairs, type) and isinstance(loss, type) and (
            issubclass(loss, InfoNCELoss) != issubclass(pairs, CodePairsDataModule)):
        raise InputError(
            f"loss {loss.__name__} with data {pairs.__name__}: loss=contrastive trains on pair batches "
            "(data=code_pairs, which it selects unless data= is given), and only on those")

