"""`lmlab export <run dir or checkpoint> --format hf --out DIR [--dtype float32|bfloat16|float16]`.

Writes a Hugging Face folder (config.json, model.safetensors, generation_config.json, tokenizer files) that
transformers, vLLM, TGI and lm-evaluation-harness load with no remote code: lmlab's GPT as LlamaForCausalLM
or GPT2LMHeadModel (what maps to what: lmlab.models.hf_architecture), a run of a Hugging Face model as its own
class. The folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmlab.checkpoint import load_checkpoint
from lmlab.cli.user_errors import check_writable, one_line_errors
from lmlab.errors import ArgumentError, InputError

FORMATS = ("hf",)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from lmlab.export.writer import DTYPES

    parser = argparse.ArgumentParser(prog="lmlab export", description=__doc__.split("\n\n")[1])
    parser.add_argument("checkpoint", help="a run directory (its best.ckpt, else last.ckpt) or a .ckpt file")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="hf: the Hugging Face format (default)")
    parser.add_argument("--out", required=True, help="the folder to write (new, or empty)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weight dtype (default float32)")
    return parser.parse_args(argv)


def export_run(args: argparse.Namespace) -> Path:
    from lmlab.export import UnmappableError, export_hf
    from lmlab.export.writer import check_out

    with out_flag("--out"):
        check_out(args.out)  # before the checkpoint is read
    check_writable("--out", args.out, folder=True)
    model, tokenizer, _ = load_checkpoint(args.checkpoint, field="checkpoint")
    if tokenizer is None:
        raise InputError(f"checkpoint={args.checkpoint} holds no tokenizer; the Hugging Face folder needs one")
    try:
        with out_flag("--out"):
            out = export_hf(model, tokenizer, args.out, args.dtype)
    except UnmappableError as e:
        raise InputError(f"checkpoint={args.checkpoint}: {e}") from None
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.2f} MiB, {args.dtype}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer.from_pretrained({str(out)!r})")
    return out


@contextmanager
def out_flag(flag: str) -> Iterator[None]:
    """export_hf names its parameter ``out``; on the command line it is ``flag``."""
    try:
        yield
    except ArgumentError as e:
        if e.name != "out":
            raise
        raise InputError(f"{flag}={e.value}: {e.rule}") from None


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(composing=False):
        return export_run(args)
