"""`lmlab eval <run dir or checkpoint> [--tasks lmlab_val,...] [--documents 64] [--hf-out DIR] [--task-out DIR]`.

Exports the run (as `lmlab export` does) and evaluates it with lm-evaluation-harness (`--model hf`). The task
lmlab_val is local: rolling log-likelihood over the run's own held-out documents, written to a JSON-lines
file, so nothing is downloaded. Its word and byte perplexities are printed next to the same figures computed
by lmlab's own GPT, and next to per-token perplexity (lmlab's unit: byte_perplexity ** (bytes / tokens)).
Other task names are passed to lm-eval as they are (they download their data sets).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmlab.checkpoint import load_checkpoint, resolve_checkpoint
from lmlab.cli.export import out_flag
from lmlab.cli.quantize import run_datamodule
from lmlab.cli.user_errors import one_line_errors
from lmlab.errors import InputError
from lmlab.export.harness import TASK_NAME

UNITS = {"word_perplexity": "words", "byte_perplexity": "bytes"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmlab eval", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", help="a run directory (its best.ckpt, else last.ckpt) or a .ckpt file")
    parser.add_argument("--tasks", default="lmlab_val", help="comma-separated lm-eval tasks (default lmlab_val)")
    parser.add_argument("--documents", type=int, default=64, help="lmlab_val: held-out documents scored")
    parser.add_argument("--val-batches", type=int, default=8, help="validation batches for lmlab's val/ppl")
    parser.add_argument("--hf-out", help="keep the exported folder here (default: a temporary one)")
    parser.add_argument("--task-out", help="keep the local task (lmlab_val.yaml + .jsonl) here, for lm_eval "
                        "--include_path (default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    parser.add_argument("--device", default="cpu", help="lm-eval device (cpu, cuda)")
    return parser.parse_args(argv)


def evaluate_run(args: argparse.Namespace, console: Console) -> dict:
    from lmlab.compare import perplexity
    from lmlab.export import export_hf
    from lmlab.export.harness import rolling_nll, run_lm_eval, validation_documents, write_task
    from lmlab.export.writer import check_out

    for flag in ("documents", "val_batches", "batch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.hf_out:
        with out_flag("--hf-out"):
            check_out(args.hf_out)
    ckpt = resolve_checkpoint(args.checkpoint, field="checkpoint")
    model, tokenizer, _ = load_checkpoint(ckpt, field="checkpoint")
    datamodule = run_datamodule(ckpt) if TASK_NAME in tasks else None
    if TASK_NAME in tasks and datamodule is None:
        raise InputError(f"--tasks {TASK_NAME}: needs the run's config.yaml beside {ckpt} (its held-out documents)")
    with tempfile.TemporaryDirectory(prefix="lmlab-eval-") as scratch:
        with out_flag("--hf-out"):
            hf_folder = export_hf(model, tokenizer, args.hf_out or Path(scratch) / "hf")
        documents = validation_documents(datamodule, args.documents) if datamodule is not None else []
        task_folder = write_task(args.task_out or Path(scratch) / "tasks", documents) if documents else None
        results = run_lm_eval(hf_folder, tasks, task_folder, args.batch_size, args.device)
    figures = {"lm_eval": results}
    if datamodule is not None:
        own = rolling_nll(model, tokenizer, documents)
        val_ppl = perplexity(model, itertools.islice(datamodule.val_dataloader(), args.val_batches))
        figures.update(lmlab=own, val_ppl=val_ppl)
        print_comparison(results[TASK_NAME], own, val_ppl, len(documents), console)
    for task in tasks:
        if task != TASK_NAME:
            console.print(task, {k: v for k, v in results.get(task, {}).items() if not k.endswith("stderr,none")})
    return figures


def print_comparison(lm_eval: dict, own, val_ppl: float, n_documents: int, console: Console) -> None:
    table = Table(title=f"{TASK_NAME}: {n_documents} held-out documents, {own.tokens} tokens, "
                        f"{own.bytes} bytes, {own.words} words")
    for column in ("", "lm-eval (exported model)", "lmlab (own GPT)"):
        table.add_column(column, justify="right" if column else "left")
    for metric, unit in UNITS.items():
        table.add_row(metric, f"{lm_eval[metric + ',none']:.6g}", f"{own.perplexity(unit):.6g}")
    table.add_row("bits_per_byte", f"{lm_eval['bits_per_byte,none']:.6g}", f"{own.nll / own.bytes / math.log(2):.6g}")
    byte_ppl = lm_eval["byte_perplexity,none"]
    table.add_row("token perplexity", f"{byte_ppl ** (own.bytes / own.tokens):.6g} (from bytes)",
                  f"{own.perplexity('tokens'):.6g}")
    table.add_row("val/ppl (packed blocks)", "", f"{val_ppl:.6g}")
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(composing=False):
        return evaluate_run(args, Console())
