"""`lmlab mup coord-check [hydra overrides...] --widths 64,128,256,512 --steps 3`: μP's coordinate check.

Composes the same config as `python train.py` (conf/train.yaml and the overrides: model.*, optimizer=...),
then, for each width (model.n_embd) and for the standard and μP parametrizations, trains the model a few
steps with the configured optimizer at its base LR on random Zipf-distributed tokens and records the mean
|activation| and its change since init for the embedding output, each block's attention and MLP outputs
and the logits (lmlab.coord_check). Writes coord_check.json (settings, rows, widest/narrowest ratios) and
coord_check.png (one panel per layer kind, width on x, one line per step) to --out, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lmlab.cli import build as build_node
from lmlab.cli import compose
from lmlab.cli.user_errors import one_line_errors
from lmlab.coord_check import KINDS, coord_check, plot, width_ratios
from lmlab.errors import InputError

GPT_TARGETS = ("lmlab.models.GPT", "lmlab.models.gpt.GPT")


def parse_widths(text: str) -> list[int]:
    try:
        widths = sorted({int(w) for w in text.split(",")})
    except ValueError:
        raise InputError(f"--widths={text}: must be comma-separated integers such as 64,128,256,512") from None
    if len(widths) < 2 or widths[0] < 1:
        raise InputError(f"--widths={text}: needs at least two widths >= 1")
    return widths


def model_builder(model_cfg: dict, widths: list[int]):
    """``build(width, parametrization)`` for the composed model group, after checking every width builds."""
    from lmlab.errors import ArgumentError
    from lmlab.models import GPT

    if model_cfg.get("_target_") not in GPT_TARGETS:
        raise InputError(f"model._target_={model_cfg.get('_target_')}: the coordinate check (and μP) needs "
                         "lmlab's GPT (model=gpt_tiny, gpt_small, llama_tiny)")
    kwargs = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    for width in widths:
        if width % kwargs.get("n_head", 4):
            raise InputError(f"--widths: {width} is not divisible by model.n_head={kwargs.get('n_head', 4)}")

    def build(width: int, parametrization: str) -> torch.nn.Module:
        try:
            return GPT(**{**kwargs, "n_embd": width, "parametrization": parametrization})
        except ArgumentError as e:
            raise e.within("model") from None

    with torch.device("meta"):
        for width in widths:
            build(width, "mup")
    return build


def summary(rows: list[dict]) -> dict:
    """Widest / narrowest ratios per parametrization and step: each hidden layer's mean |h| and the logits'
    mean |change|."""
    out = {}
    for quantity in ("mean_abs", "mean_abs_change"):
        for (parametrization, step, layer), ratio in sorted(width_ratios(rows, quantity).items()):
            out.setdefault(parametrization, {}).setdefault(f"step {step}", {})[f"{layer} {quantity}"] = ratio
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lmlab mup", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("coord-check", help="activations against width, standard vs μP")
    check.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (model.n_layer=2 ...)")
    check.add_argument("--widths", default="64,128,256,512", help="model.n_embd values (comma-separated)")
    check.add_argument("--steps", type=int, default=3, help="optimizer steps recorded after init")
    check.add_argument("--seeds", type=int, default=3, help="models per width, averaged")
    check.add_argument("--batch-size", type=int, default=8)
    check.add_argument("--seq-len", type=int, default=64)
    check.add_argument("--out", default="coord_check", help="folder for coord_check.json and coord_check.png")
    args = parser.parse_args(argv)
    for flag in ("steps", "seeds", "batch_size", "seq_len"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    with one_line_errors():
        widths = parse_widths(args.widths)
        cfg = compose("train", args.overrides)
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        build = model_builder(model_cfg, widths)
        if args.seq_len > model_cfg.get("block_size", 256):
            raise InputError(f"--seq-len={args.seq_len} exceeds model.block_size={model_cfg.get('block_size')}")
        optimizer_factory = build_node(cfg.optimizer)
        rows = coord_check(build, optimizer_factory, widths, args.steps, seeds=range(args.seeds),
                           batch_size=args.batch_size, seq_len=args.seq_len)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {"widths": widths, "steps": args.steps, "seeds": args.seeds, "batch_size": args.batch_size,
                     "seq_len": args.seq_len, "data": "random tokens, Zipf(1) over the vocabulary",
                     "model": model_cfg, "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
                     "overrides": args.overrides, "kinds": list(KINDS)},
        "ratios_widest_over_narrowest": summary(rows),
        "rows": rows,
    }
    (out / "coord_check.json").write_text(json.dumps(result, indent=1))
    plot(rows, str(out / "coord_check.png"))
    for parametrization, steps in result["ratios_widest_over_narrowest"].items():
        for step, ratios in steps.items():
            hidden = [v for k, v in ratios.items() if k.endswith(" mean_abs") and not k.startswith("logits")]
            change = ratios.get("logits mean_abs_change")
            print(f"{parametrization:>8} {step}: hidden |h| ratio {min(hidden):.2f}-{max(hidden):.2f}"
                  + (f", logit change ratio {change:.2f}" if change is not None else ""))
    print(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
    return result
