"""Training-step speed of lmlab against a plain PyTorch loop: tokens/s, step time, peak memory and MFU.

    python benchmarks/train_step.py [--model gpt_tiny] [--batch-size 32] [--seq-len 128]
                                    [--precision 32-true] [--compile] [--steps 20] [--repeats 3] [--smoke]

Four ways to train the same model shape on the same batches (the stdlib corpus, lmlab's tokenizer),
with the same AdamW (lmlab's), schedule, gradient clipping and precision:

  plain    a plain PyTorch loop written here: forward, cross-entropy, backward, clip, step
  lit      lmlab's LitLM under a real Trainer, `callbacks=none logger=none`
  default  the default callbacks and loggers, as `python train.py` runs them (W&B offline + CSV)
  hf       a Hugging Face GPT2LMHeadModel of the same shape through `model=hf`, callbacks and loggers off

Each is timed over ``--steps`` optimizer steps after ``--warmup`` (from the start of one batch to the
start of the batch ``--steps`` later: data loading, transfer and the callbacks included; validation
off). The variants take turns, ``--repeats`` rounds; ratios to the plain loop are taken within each
round (side by side in time, so a busy machine slows all alike) and their median is reported. The
train.py variants run as `python train.py` does, in a fresh process each, timed by a StepClock callback
added to the run by config; the plain loop runs here, on objects built from the config train.py composes.
Peak memory: CUDA's max allocated per variant; on CPU the peak RSS of each train.py process, and of one
extra process that runs the plain loop alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from common import CONF, DEVICE, device_info, median, read_json, run_quietly, train_config, train_py, write_json
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.cost import (
    measured_matmul_flops,
    model_shape,
    peak_flops_per_device,
    precision_dtype,
    train_flops_per_token,
)
from lmlab.devices import peak_memory_gb, synchronize

VARIANTS = ("plain", "lit", "default", "hf")
HF_KEYS = ("_target_", "architecture", "pretrained", "trust_remote_code", "vocab_size")  # the rest: sizes


TRAINING_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
                  "on_before_zero_grad", "on_train_batch_end")


class StepClock(L.Callback):
    """Put into a `python train.py` run by config (``+callbacks.step_clock._target_=train_step.StepClock``):
    wall time from the start of optimizer step ``start`` to the start of step ``start + steps``, and the time
    each other callback's training hooks take in that window, split into logging and other steps. Writes
    them, the peak memory and the model's training FLOPs per token as ``step_clock.json`` in the run
    directory, then stops the run."""

    def __init__(self, start: int, steps: int):
        self.start, self.steps = start, steps
        self.hook_seconds: dict[str, dict[str, float]] = {}
        self.step = -1

    def on_train_start(self, trainer, pl_module):
        self.every = trainer.log_every_n_steps or 1
        for callback in trainer.callbacks:
            if callback is not self:
                for hook in TRAINING_HOOKS:
                    if getattr(type(callback), hook) is not getattr(L.Callback, hook):
                        setattr(callback, hook, self._timed(type(callback).__name__, getattr(callback, hook)))

    def _timed(self, name: str, hook):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = hook(*args, **kwargs)
            if self.start <= self.step < self.start + self.steps:
                kind = "logging_steps" if (self.step + 1) % self.every == 0 else "other_steps"
                costs = self.hook_seconds.setdefault(name, {"logging_steps": 0.0, "other_steps": 0.0})
                costs[kind] += time.perf_counter() - start
            return result

        return run

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step
        if self.step == self.start:
            self.t0 = clock_start()
        elif self.step == self.start + self.steps:
            seconds, peak_mem_gb = clock_stop(self.t0)
            flops = train_flops_per_token(model_shape(pl_module.model), batch.shape[1] - 1)
            write_json(trainer, "step_clock", dict(seconds=seconds, flops_per_token=flops, callback_ms_per_step=
                                                   self.ms_per_step(), peak_mem_gb=peak_mem_gb))
            trainer.should_stop = True

    def ms_per_step(self) -> dict[str, dict[str, float]]:
        """Each callback's hook time per step in the window, on logging steps and on the others."""
        window = range(self.start, self.start + self.steps)
        logging = sum((k + 1) % self.every == 0 for k in window)
        counts = {"logging_steps": logging, "other_steps": self.steps - logging}
        return {name: {kind: round(1e3 * t / counts[kind], 3) if counts[kind] else None for kind, t in costs.items()}
                for name, costs in self.hook_seconds.items()}


def clock_start() -> float:
    synchronize(DEVICE)
    return time.perf_counter()


def clock_stop(t0: float) -> tuple[float, float]:
    """Seconds since ``t0`` and the peak memory: CUDA's max allocated, or this process's peak RSS."""
    synchronize(DEVICE)
    return time.perf_counter() - t0, peak_memory_gb(DEVICE)


def overrides(args, variant: str, plain: DictConfig | None = None) -> list[str]:
    """train.py overrides of one variant: the same data, schedule and trainer settings for all (``plain``: the
    plain variant's config, whose model the hf variant mirrors)."""
    max_steps = args.warmup + args.steps + 1
    common = [f"model={args.model}", f"data.batch_size={args.batch_size}", f"data.block_size={args.seq_len}",
              f"trainer.precision={args.precision}", f"compile={str(args.compile).lower()}",
              f"trainer.max_steps={max_steps}", f"sched.warmup_steps={min(args.warmup, max_steps)}",
              "trainer.limit_val_batches=0", "samples.num_prompts=0", *args.override]
    if args.model_overrides:
        common += [f"model.{o}" for o in args.model_overrides]
    if variant == "default":
        return common
    quiet = ["callbacks=none", "logger=none"]
    common = [o for o in common if not o.startswith(("callbacks=", "logger="))]  # e.g. --override logger=csv
    if variant != "hf":
        return common + quiet
    shape = plain.model  # the lmlab GPT this HF model mirrors: the plain variant's config
    if shape.position != "learned" or shape.norm != "layernorm" or shape.mlp != "standard":
        raise SystemExit(f"--model {args.model}: the hf variant mirrors GPT-2-style shapes only")
    hf = [o for o in common if not o.startswith("model")] + ["model=hf", "model.architecture=gpt2"]
    llama_sizes = [f"~model.{k}" for k in OmegaConf.load(CONF / "model" / "hf.yaml") if k not in HF_KEYS]
    gpt2 = [*hf, *llama_sizes, f"+model.n_embd={shape.n_embd}", f"+model.n_layer={shape.n_layer}",
            f"+model.n_head={shape.n_head}", f"+model.n_positions={shape.block_size}", "+model.resid_pdrop=0.0",
            "+model.embd_pdrop=0.0", "+model.attn_pdrop=0.0"]
    return gpt2 + quiet


def run_trainer(args, variant: str, run_dir: Path, plain: DictConfig | None) -> dict:
    """One `python train.py` run of the variant, timed by a StepClock callback in it."""
    clock = {"_target_": "train_step.StepClock", "start": args.warmup, "steps": args.steps}
    train_py(overrides(args, variant, plain), run_dir, callbacks={"step_clock": clock})
    return read_json(run_dir, "step_clock")


def run_plain(args, cfg: DictConfig) -> dict:
    """The plain loop on the objects the same config builds (data, model, optimizer, schedule)."""
    L.seed_everything(cfg.seed)
    device = DEVICE
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model).to(device).train()
    forward = torch.compile(model) if cfg.compile else model
    optimizer = instantiate(cfg.optimizer)(model)  # the factory(model) contract LitLM uses
    scheduler = instantiate(cfg.sched)(optimizer)
    mixed = "mixed" in str(cfg.trainer.precision)
    dtype = precision_dtype(cfg.trainer.precision)
    clip = cfg.trainer.gradient_clip_val
    for step, batch in enumerate(datamodule.train_dataloader()):
        batch = batch.to(device, non_blocking=True)
        if step == args.warmup:
            t0 = clock_start()
        elif step == args.warmup + args.steps:
            seconds, peak = clock_stop(t0)
            flops = train_flops_per_token(model_shape(model), args.seq_len)
            return dict(seconds=seconds, flops_per_token=flops, peak_mem_gb=peak if DEVICE.type == "cuda" else None)
        with torch.autocast(device.type, dtype=dtype, enabled=mixed):
            logits = forward(batch[:, :-1]).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    raise RuntimeError("the training split ran out before the timed steps ended")


def run_variant(args, variant: str, plain: DictConfig | None) -> dict:
    """``plain``: the plain variant's resolved config (the train.py variants' own is theirs)."""
    if variant == "plain":
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return run_plain(args, plain)
    with tempfile.TemporaryDirectory(prefix=f"train_step_{variant}_") as tmp:
        return run_trainer(args, variant, Path(tmp) / "run", plain)


def plain_config(args) -> DictConfig:
    with tempfile.TemporaryDirectory(prefix="train_step_config_") as tmp:
        return train_config(overrides(args, "plain"), Path(tmp) / "run")


def plain_peak_rss_gb(argv: list[str]) -> float:
    """Peak resident memory of a fresh process that runs only the plain loop (its CPU memory alone)."""
    cmd = [sys.executable, __file__, *argv, "--only", "plain"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["peak_rss_gb"]


@run_quietly
def main(argv: list[str] | None, result: dict) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt_tiny", help="a conf/model option (GPT-2-style for the hf variant)")
    parser.add_argument("--model-overrides", nargs="*", default=[], help="model fields, e.g. n_layer=2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", default="32-true", help="trainer.precision, e.g. bf16-mixed")
    parser.add_argument("--compile", action="store_true", help="compile=true: the model under torch.compile")
    parser.add_argument("--warmup", type=int, default=5, help="optimizer steps before the clock starts")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all variants")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--override", nargs="*", default=[], help="more train.py overrides for every variant")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check that the benchmark runs")
    parser.add_argument("--only", choices=["plain"], help=argparse.SUPPRESS)  # the plain loop alone, for its RSS
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.repeats = 1, 2, 1

    if args.only:
        run_plain(args, plain_config(args))
        result["peak_rss_gb"] = peak_memory_gb("cpu")
        return

    cuda = torch.cuda.is_available()
    dtype = precision_dtype(args.precision)
    result.update(device_info(), benchmark="train_step", model=args.model, model_overrides=args.model_overrides,
                  batch_size=args.batch_size, seq_len=args.seq_len, precision=args.precision, compile=args.compile,
                  warmup=args.warmup, steps=args.steps, repeats=args.repeats,
                  memory_measure="cuda max allocated" if cuda else "peak RSS of a fresh process")
    seconds = result["seconds_per_round"] = {v: [] for v in args.variants}  # filled as rounds finish
    # a CPU's peak is measured (a matmul), and a busy CPU measures low: the best of one per round
    peaks = result["peak_flops_measured"] = []
    runs = {}
    plain = plain_config(args) if {"plain", "hf"} & set(args.variants) else None
    for _ in range(args.repeats):
        for variant in args.variants:
            runs[variant] = run_variant(args, variant, plain)
            seconds[variant].append(round(runs[variant]["seconds"], 4))
        if not cuda:
            peaks.append(measured_matmul_flops.__wrapped__(dtype, seconds=0.2 if args.smoke else 1.0))
    peak = result["peak_flops"] = peak_flops_per_device("cuda", dtype) if cuda else max(peaks)

    tokens = args.batch_size * args.seq_len * args.steps
    results = result["variants"] = {}
    for variant, run in runs.items():
        tokens_per_s = tokens / median(seconds[variant])
        flops = run["flops_per_token"]
        memory = run["peak_mem_gb"] if cuda or variant != "plain" else None if args.smoke else plain_peak_rss_gb(argv)
        results[variant] = dict(tokens_per_s=round(tokens_per_s, 1),
                                step_time_s=round(median(seconds[variant]) / args.steps, 5),
                                mfu=round(flops * tokens_per_s / peak, 4) if peak else None,
                                peak_mem_gb=None if memory is None else round(memory, 3))
    if "default" in runs:  # the hooks' host time (on a GPU: launches, no waiting), last round
        result["callback_ms_per_step"] = runs["default"]["callback_ms_per_step"]
    ratios = result["ratio_to_plain"] = {}
    for variant in [v for v in results if v != "plain"] if "plain" in results else []:
        per_round = [p / s for p, s in zip(seconds["plain"], seconds[variant], strict=True)]
        memory = results[variant]["peak_mem_gb"], results["plain"]["peak_mem_gb"]
        ratios[variant] = dict(tokens_per_s=round(median(per_round), 3),
                               tokens_per_s_per_round=[round(r, 3) for r in per_round],
                               peak_mem=round(memory[0] / memory[1], 3) if None not in memory else None)


if __name__ == "__main__":
    main()
