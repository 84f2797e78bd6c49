"""`lmlab quantize <run dir or .ckpt> --mode int8|int4 [--group-size 64] --out <file.safetensors>`.

Writes a weight-only quantized checkpoint that generate.py loads directly (`ckpt=<file>`) and
prints what quantization changed, float model next to quantized: weight bytes, perplexity on the
run's own held-out split (its DataModule rebuilt from the run's config.yaml, so the cached tokens
are reused), greedy agreement over validation prompts, and greedy decode tokens/s at batch 1 and 8.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from lmlab.checkpoint import load_checkpoint, resolve_checkpoint
from lmlab.cli.user_errors import check_writable, one_line_errors, writing
from lmlab.compare import compare_models
from lmlab.data.saved import run_datamodule
from lmlab.devices import resolve_device
from lmlab.errors import ArgumentError, InputError
from lmlab.quantization import MODES, quantization_settings, quantize, save_quantized
from lmlab.quantization.checkpoint import SAFETENSORS

FLAGS = {"mode": "--mode", "group_size": "--group-size", "skip": "--skip", "matmul_dtype": "--matmul-dtype",
         "device": "--device"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmlab quantize", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", help="a run directory (its best.ckpt, else last.ckpt) or a .ckpt file")
    parser.add_argument("--mode", required=True, help=f"one of {', '.join(MODES)}")
    parser.add_argument("--group-size", type=int, help="int4: input columns per scale (default 64)")
    parser.add_argument("--symmetric", action="store_true", help="int4: symmetric scales (no offsets)")
    parser.add_argument("--embeddings", action="store_true", help="also quantize the embeddings and LM head")
    parser.add_argument("--matmul-dtype", help="int8: bfloat16 or float32 (exact); default: the fastest for the "
                        "device (bfloat16 on CPU)")
    parser.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                        help="module names left in float (fnmatch, repeatable), e.g. 'blocks.0.*'")
    parser.add_argument("--out", required=True, help="the quantized checkpoint to write (.safetensors)")
    parser.add_argument("--prompts", type=int, default=64, help="validation prompts for greedy agreement")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--val-batches", type=int, help="validation batches for perplexity (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per model (the fastest counts)")
    parser.add_argument("--compile", action="store_true", help="time decoding with the compiled decode step")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU: decode on one thread and count its CPU seconds (steady on a busy machine)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if not args.out.endswith(SAFETENSORS):
        raise InputError(f"--out={args.out} must end in .safetensors (the quantized checkpoint format)")
    check_writable("--out", args.out)
    if args.checkpoint.endswith(SAFETENSORS):
        raise InputError(f"{args.checkpoint} is a quantized checkpoint already; give the float run "
                         "directory or .ckpt")
    for flag in ("prompts", "prompt_tokens", "new_tokens", "repeats", "val_batches"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')}={value} must be >= 1")


def quantize_run(args: argparse.Namespace, console: Console) -> dict:
    try:
        settings = quantization_settings(args.mode, args.group_size, args.skip, args.embeddings, args.symmetric,
                                         args.matmul_dtype)
        check_args(args)
        device = resolve_device(args.device)  # before anything is read or written
        if args.cpu_time and torch.device(device).type != "cpu":
            raise InputError(f"--cpu-time counts CPU seconds; it needs --device cpu (device is {device})")
        ckpt = resolve_checkpoint(args.checkpoint, field="checkpoint")
        model, tokenizer, _ = load_checkpoint(ckpt, field="checkpoint")
        quantized = quantize(copy.deepcopy(model), settings)
    except ArgumentError as e:
        raise e.renamed(FLAGS) from None
    with writing("--out", args.out):
        out = save_quantized(quantized, args.out, tokenizer)
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")

    if args.cpu_time:
        torch.set_num_threads(1)
    models = {str(next(model.parameters()).dtype).removeprefix("torch."): model.to(device),
              args.mode: quantized.to(device)}
    datamodule = run_datamodule(ckpt)
    if datamodule is None:
        console.print(f"no config.yaml of a language-model run beside {ckpt}: no perplexity, random prompts")
        prompts = torch.randint(0, tokenizer.vocab_size, (args.prompts, args.prompt_tokens),
                                generator=torch.Generator().manual_seed(0))
        val_batches = None
    else:
        prompts = torch.tensor(datamodule.val_prompts(args.prompts, args.prompt_tokens))
        val_batches = list(itertools.islice(datamodule.val_dataloader(), args.val_batches))
    figures = compare_models(models, next(iter(models)), val_batches, prompts, args.new_tokens,
                             repeats=args.repeats, clock=time.process_time if args.cpu_time else time.perf_counter,
                             compile=args.compile)
    print_table(figures, len(prompts), args.new_tokens, args.cpu_time, console)
    return figures


def print_table(figures: dict, n_prompts: int, new_tokens: int, cpu_time: bool, console: Console) -> None:
    (before, a), (after, b) = figures.items()
    table = Table(title=f"{after} weight-only quantization (greedy: {n_prompts} prompts x {new_tokens} tokens)")
    for column in ("", before, after, "change"):
        table.add_column(column, justify="right" if column else "left")
    mib = 2**20
    table.add_row("weights MiB", f"{a['weight_bytes'] / mib:.3f}", f"{b['weight_bytes'] / mib:.3f}",
                  f"x{b['weight_bytes'] / a['weight_bytes']:.3f}")
    layer_bytes, fp32_bytes = b["quantized_layer_bytes"], 4 * b["quantized_weights"]
    table.add_row("quantized layers MiB", f"{fp32_bytes / mib:.3f}", f"{layer_bytes / mib:.3f}",
                  f"x{layer_bytes / fp32_bytes:.3f} (x{2 * layer_bytes / fp32_bytes:.3f} of bf16)")
    if a["perplexity"] is not None:
        table.add_row("val perplexity", f"{a['perplexity']:.3f}", f"{b['perplexity']:.3f}",
                      f"{100 * (b['perplexity'] / a['perplexity'] - 1):+.2f}%")
    table.add_row("greedy agreement", "100%", f"{100 * b['greedy_agreement']:.1f}%",
                  f"{100 * b['identical_prompts']:.0f}% prompts same")
    for batch in (1, 8):
        key = f"tokens_per_s_batch{batch}"
        label = f"tokens/{'CPU ' if cpu_time else ''}s batch {batch}"
        table.add_row(label, f"{a[key]:.1f}", f"{b[key]:.1f}", f"x{b[key] / a[key]:.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    """-> the figures of both models (what the table shows)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(composing=False):
        return quantize_run(args, Console())
