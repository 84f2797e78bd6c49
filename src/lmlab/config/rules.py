"""The whole config of a command: its own keys, each group's node (checked by its target), and the rules that
join groups (the data's blocks fit the model's context, the task, data and loss agree, ...).

Input is the resolved config as plain data (``OmegaConf.to_container(cfg, resolve=True)``); nothing is built.
Every failure is one :class:`~lmlab.errors.InputError` naming each key involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import torch

from lmlab.arguments import NonNegative, NonNegativeInt, PositiveInt, checked
from lmlab.config.nodes import Checked, check_group, check_node, check_options
from lmlab.errors import ArgumentError, InputError, under

# in this order: a group before those that interpolate its keys, so an error names the key the user set
GROUPS = ("data", "model", "trainer", "task", "loss", "optimizer", "sched", "logger", "decoding", "callbacks")
# tokens of each end-of-run sample prompt (cli/train.py's samples), at most data.block_size
SAMPLE_PROMPT_TOKENS = 16


@dataclass
class TrainOptions:
    """conf/train.yaml's own keys (each group's node is checked by its target); the yaml gives every value."""

    task_name: str
    seed: int
    optimized_metric: str
    samples: dict
    paths: dict
    data: dict
    model: dict
    task: dict
    loss: dict
    optimizer: dict
    trainer: dict
    decoding: dict
    ckpt_path: str | None = None
    compile: bool = False
    sched: dict | None = None
    logger: dict | None = None
    callbacks: dict | None = None


@dataclass
class Samples:
    """Continuations of validation prompts printed at the end of training."""

    num_prompts: NonNegativeInt
    max_new_tokens: PositiveInt


@dataclass
class Paths:
    root_dir: str
    log_dir: str
    cache_dir: str
    output_dir: str


def generate_rules(prompt: str | None, prompt_file: str | None, device: str, ckpt: str, quantize: str | None,
                   quantize_group_size: int | None) -> None:
    if (prompt is None) == (prompt_file is None):
        raise ArgumentError("", None, '{prompt}, {prompt_file}: give exactly one of prompt="..." or prompt_file=<file '
                            "with one prompt per line>", prompt=..., prompt_file=...)
    if prompt == "":
        raise ArgumentError("prompt", prompt, "is empty; give at least one character to continue from")
    if prompt_file is not None and not Path(prompt_file).expanduser().is_file():
        what = "is a directory, not a file of prompts" if Path(prompt_file).expanduser().is_dir() else "does not exist"
        raise ArgumentError("prompt_file", Path(prompt_file), what)
    from lmlab.checkpoint import check_checkpoint
    from lmlab.devices import check_device
    from lmlab.quantization.convert import quantization_of

    check_device(device)
    check_checkpoint(ckpt, field="ckpt")
    quantization_of(quantize, quantize_group_size)


@dataclass
class GenerateOptions:
    """conf/generate.yaml's own keys; the yaml gives every value."""

    argument_rules = staticmethod(generate_rules)

    ckpt: str
    prompt: str | None
    prompt_file: str | None
    max_new_tokens: PositiveInt
    seed: int
    device: str
    quantize: Literal["int8", "int4"] | None
    quantize_group_size: PositiveInt | None
    decoding: dict


PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16", "bf16",
              "transformer-engine", "transformer-engine-float16", 16, 32, 64)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


def trainer_rules(max_steps: int, fast_dev_run: bool | int, gradient_clip_val: float | None,
                  gradient_clip_algorithm: str | None, accelerator: str, devices) -> None:
    from lmlab.devices import accelerator_missing

    if devices == 0 or devices == []:  # Lightning refuses these only once the Trainer is built
        raise ArgumentError("devices", devices, "must be a count >= 1, -1 (every device), 'auto' or a list of "
                            "device ids")
    missing = accelerator_missing(accelerator)
    if missing:
        raise ArgumentError("accelerator", accelerator, f"{missing}; use trainer=cpu or trainer.accelerator=auto")
    if not fast_dev_run and max_steps < 1:  # schedules and cost projections count optimizer steps
        raise ArgumentError("max_steps", max_steps, "must be a positive number of optimizer steps (>= 1)")
    if gradient_clip_algorithm == "value" and gradient_clip_val == 0:
        raise ArgumentError("gradient_clip_val", 0, "with {gradient_clip_algorithm} would zero every gradient; use "
                            "null to turn clipping off", gradient_clip_algorithm=gradient_clip_algorithm)


@checked(rules=trainer_rules)
def lightning_trainer(max_steps: Annotated[int, at.Ge(-1)] = -1, accumulate_grad_batches: PositiveInt = 1,
                      gradient_clip_val: NonNegative | None = None,
                      gradient_clip_algorithm: Literal["norm", "value"] | None = None,
                      precision: Literal[PRECISIONS] | None = None, accelerator: Literal[ACCELERATORS] = "auto",
                      log_every_n_steps: PositiveInt | None = None, fast_dev_run: bool | NonNegativeInt = False,
                      val_check_interval: PositiveInt | Annotated[float, at.Gt(0), at.Le(1)] | None = None,
                      devices: Annotated[int, at.Ge(-1)] | str | list[NonNegativeInt] = "auto") -> None:
    """What lmlab needs of Lightning Trainer arguments beyond their types (Lightning checks some of these only
    once fit has started, others never): the Trainer's node is checked against this and its own signature."""


def check_train_config(cfg: dict, multirun: bool = False) -> dict[str, Checked]:
    """Every problem of a training config that needs no object, as one InputError; returns each checked node."""
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    check_options(TrainOptions, cfg)
    check_options(Samples, cfg["samples"], "samples")
    check_options(Paths, cfg["paths"], "paths")
    checked = {}
    for group in GROUPS:
        checked[group] = (check_node(cfg[group], group, group, narrowed=lightning_trainer) if group == "trainer"
                          else check_group(group, cfg[group], group))
    check_across_groups(cfg, checked, multirun)
    return checked


def check_generate_config(cfg: dict) -> None:
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    check_group("decoding", cfg["decoding"], "decoding")  # before the checkpoint is read
    check_options(GenerateOptions, cfg)


def check_across_groups(cfg: dict, checked: dict, multirun: bool) -> None:
    """Rules that join groups; each message names every key involved."""
    trainer, data, model = checked["trainer"], checked["data"], checked["model"]
    if multirun and trainer.get("strategy") == "ddp":
        from lmlab.devices import ranks_started_outside

        if not ranks_started_outside():
            raise InputError("trainer.strategy=ddp re-executes the command line, which would re-run the whole "
                             "multirun; use trainer=ddp_spawn in sweeps (or a SLURM launcher, "
                             "hydra/launcher=slurm_gpu, whose srun starts the ranks)")
    if model.get("init_from") is not None and data.get("tokenizer_from") is None:
        raise InputError(f"model.init_from={model.get('init_from')}: the pretrained weights index the folder's "
                         "tokenizer, not a BPE trained on this corpus; set data.tokenizer_from to the same folder")
    vocab = model.get("vocab_size")
    if vocab is not None and data.get("tokenizer_from") is None and vocab < data.get("vocab_size"):
        raise InputError(f"model.vocab_size={vocab}: must be at least data.vocab_size={data.get('vocab_size')} "
                         "(the tokenizer's ids index the model's embedding)")
    context = model_context(model)
    check_block_fits_context(context, data.get("block_size"))
    samples = cfg["samples"]
    prompt = min(SAMPLE_PROMPT_TOKENS, data.get("block_size"))
    if context is not None and samples["num_prompts"] and prompt + samples["max_new_tokens"] > context:
        raise InputError(f"samples.max_new_tokens={samples['max_new_tokens']}: {prompt} prompt tokens + "
                         f"samples.max_new_tokens must be at most the model's context ({context})")
    check_same_batches(checked)
    check_fused_clipping(checked["optimizer"], trainer)
    if model.get("parametrization") == "mup":  # the optimizer applies μP's per-group learning rates
        from lmlab.optim.mup import check_optimizer

        with under("optimizer"):
            check_optimizer(checked["optimizer"].target, cls=checked["optimizer"].get("cls"))


def model_context(model: Checked) -> int | None:
    """The longest sequence the model takes, where its config says (lmlab's GPT; HF configs that set it)."""
    return model.get("max_position_embeddings") or model.get("n_positions") or model.get("block_size")


def check_block_fits_context(context: int | None, block_size: int) -> None:
    if context is not None and block_size > context:
        raise InputError(f"data.block_size={block_size}: must be at most the model's context ({context}: "
                         "model.block_size or model.max_position_embeddings)")


def check_same_batches(checked: dict) -> None:
    """The task, the data and the loss agree on the batches they take (token blocks, or query/document pairs):
    each class says which as its ``batches``."""
    kinds = {group: getattr(checked[group].target, "batches", None) for group in ("task", "data", "loss")}
    if len({kind for kind in kinds.values() if kind is not None}) > 1:
        names = ", ".join(f"{group} {checked[group].target.__name__} ({kind})" for group, kind in kinds.items())
        raise InputError(f"{names}: they must take the same batches; loss=contrastive trains on pair batches "
                         "(it selects data=code_pairs and task=pair_embedding unless data= is given), and only it does")


def check_fused_clipping(optimizer: Checked, trainer: Checked) -> None:
    """A fused optimizer unscales fp16 gradients inside its step, after clipping would have run."""
    precision = str(trainer.get("precision"))
    if optimizer.get("fused") and trainer.get("gradient_clip_val") and precision in ("16-mixed", "16"):
        raise InputError(
            f"optimizer.fused=true with trainer.precision={precision} and trainer.gradient_clip_val="
            f"{trainer.get('gradient_clip_val')}: a fused optimizer unscales the gradients inside its step, so they "
            "cannot be clipped first; set optimizer.fused=false or trainer.gradient_clip_val=0")


def world_size(devices, num_nodes: int, accelerator: str) -> int:
    """Processes a run trains on: devices per node (a count, a list of ids, "auto" or -1) times nodes."""
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        devices = torch.cuda.device_count() if cuda else 1
    elif not isinstance(devices, int):
        devices = len(devices)
    return max(devices, 1) * int(num_nodes)


def accumulation(data: dict, trainer: dict) -> int:
    """``trainer.accumulate_grad_batches`` for ``data.global_batch_size`` sequences per optimizer step (all ranks
    together) in micro batches of ``data.batch_size`` on this run's world size."""
    global_batch, explicit = data.get("global_batch_size"), trainer.get("accumulate_grad_batches", 1)
    if global_batch is None:
        return explicit
    world = world_size(trainer.get("devices", 1), trainer.get("num_nodes", 1), trainer.get("accelerator", "auto"))
    per_pass = data["batch_size"] * world
    where = (f"data.batch_size={data['batch_size']} x world size {world} (trainer.devices={trainer.get('devices')} "
             f"x trainer.num_nodes={trainer.get('num_nodes', 1)})")
    if global_batch % per_pass:
        raise InputError(f"data.global_batch_size={global_batch} is not a multiple of {where} = {per_pass}; "
                         f"allowed: multiples of {per_pass}, or change data.batch_size")
    if explicit not in (1, global_batch // per_pass):
        raise InputError(f"trainer.accumulate_grad_batches={explicit} contradicts data.global_batch_size="
                         f"{global_batch} ({where} needs {global_batch // per_pass}); set only one of them")
    return global_batch // per_pass
