"""`lmlab cost [--json] [--price P] [hydra overrides...]`: what a training config will cost.

Composes the same config as `python train.py` (conf/train.yaml and the overrides), builds only
the model, measures training throughput with a few forward/backward steps on random tokens and
decode speed with a KV cache, and prints the projection of :mod:`lmlab.cost`: FLOPs, device-hours
and money for the configured steps and for a compute-optimal token budget, and the cost per
million generated tokens. Multi-device throughput is projected as per-device throughput times
the number of devices.

Read from the config: model, data.block_size, data.batch_size, trainer.max_steps,
trainer.accumulate_grad_batches, trainer.devices, trainer.num_nodes, trainer.precision,
trainer.accelerator, and callbacks.throughput.{price_per_device_hour, peak_flops,
tokens_per_param} when that callback is configured (the flags override them).
"""

from __future__ import annotations

import argparse
import json

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lmlab.arguments import check_annotations
from lmlab.cli import build, compose, resolved
from lmlab.cli.user_errors import one_line_errors
from lmlab.config import check_train_config
from lmlab.config.rules import accumulation, world_size
from lmlab.cost import (
    CostProjection,
    format_quantity,
    measure_decode_speed,
    measure_train_throughput,
    model_shape,
    peak_flops_per_device,
    precision_dtype,
    train_flops_per_token,
)
from lmlab.devices import resolve_device
from lmlab.errors import ArgumentError

# the parameters these flags give, named as the flags: their ranges are those parameters' annotations
FLAGS = {"price_per_device_hour": "--price", "peak_flops": "--peak-flops", "decode_tokens": "--decode-tokens",
         "steps": "--measure-steps"}


def check_flags(args: argparse.Namespace) -> None:
    """Each flag as the parameter it stands for checks it (ThroughputMonitor's price, peak FLOP/s and decode
    tokens; measure_train_throughput's steps), before any config is composed or anything measured."""
    from lmlab.callbacks.throughput import ThroughputMonitor

    try:
        check_annotations(ThroughputMonitor, {"price_per_device_hour": args.price, "peak_flops": args.peak_flops,
                                              "decode_tokens": args.decode_tokens})
        check_annotations(measure_train_throughput, {"steps": args.measure_steps})
    except ArgumentError as e:
        flag = e.renamed(FLAGS)  # a flag left out is not checked, so "null or" is no choice a user has
        raise ArgumentError(flag.name, flag.value, flag.rule.replace("null or ", "")) from None


def check_config(cfg: DictConfig) -> None:
    """The config checked as train.py checks it (the same command must not cost what it could not train); the
    data is never prepared. Sets trainer.accumulate_grad_batches from data.global_batch_size, as training does."""
    from omegaconf import open_dict

    check_train_config(resolved(cfg))
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulation(cfg.data, cfg.trainer)


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The configured model, refused before it is given memory when its training would not fit (as train.py)."""
    from lmlab.config.preflight import materialize
    from lmlab.config.resources import check_training_memory

    with torch.device("cpu" if cfg.model.get("pretrained") else "meta"):
        model = build(cfg.model)
    check_training_memory(model, int(cfg.data.batch_size), int(cfg.data.block_size), device)
    return materialize(model, device).to(device)


def project_from_config(
    cfg: DictConfig,
    measure_steps: int = 5,
    decode_tokens: int = 32,
    price: float | None = None,
    peak_flops: float | None = None,
) -> tuple[dict, CostProjection]:
    """(measured inputs, projection) for a composed train config."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    device = resolve_device("auto" if accelerator in ("auto", "gpu", "cuda") else "cpu")
    precision = str(cfg.trainer.get("precision", "32-true"))
    dtype = precision_dtype(precision)
    throughput_cfg = OmegaConf.select(cfg, "callbacks.throughput", default=None) or {}
    price = price if price is not None else throughput_cfg.get("price_per_device_hour")
    peak_flops = peak_flops if peak_flops is not None else throughput_cfg.get("peak_flops")

    model = build_model(cfg, device)
    autocast = dtype if "mixed" in precision else None
    if "true" in precision:
        model = model.to(dtype)
    batch_size, seq_len = int(cfg.data.batch_size), int(cfg.data.block_size)
    per_device = measure_train_throughput(
        model, batch_size, seq_len, steps=measure_steps, autocast_dtype=autocast
    )
    decode = (
        measure_decode_speed(model, new_tokens=decode_tokens, autocast_dtype=autocast)
        if decode_tokens
        else None
    )
    shape = model_shape(model)
    n_devices = world_size(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1), accelerator)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
    inputs = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision,
        "world_size": n_devices,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "accumulate_grad_batches": accumulate,
        "max_steps": int(cfg.trainer.max_steps),
        "n_params": shape.n_params,
        "n_matmul_params": shape.n_matmul_params,
        "n_layer": shape.n_layer,
        "d_attn": shape.d_attn,
        "tokens_per_s_per_device": per_device,
        "decode_tokens_per_s": decode,
        "price_per_device_hour": price,
    }
    projection = CostProjection(
        flops_per_token=train_flops_per_token(shape, seq_len),
        n_params=shape.n_params,
        tokens_per_step=batch_size * seq_len * accumulate * n_devices,
        max_steps=int(cfg.trainer.max_steps),
        world_size=n_devices,
        tokens_per_s=per_device * n_devices,
        peak_flops=peak_flops_per_device(device, dtype, peak_flops),
        price_per_device_hour=price,
        decode_tokens_per_s=decode,
        tokens_per_param=float(throughput_cfg.get("tokens_per_param", 20.0)),
    )
    return inputs, projection


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmlab cost", description=__doc__.split("\n\n")[1])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (model=gpt_small ...), "
                                                     "before, between or after the flags")
    parser.add_argument("--price", type=float, help="money per device-hour")
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device (default: detected)")
    parser.add_argument("--measure-steps", type=int, default=5, help="timed forward/backward steps")
    parser.add_argument(
        "--decode-tokens", type=int, default=32, help="tokens generated to time decoding (0: skip)"
    )
    parser.add_argument("--json", action="store_true", help="print inputs and metrics as JSON")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with one_line_errors():
        check_flags(args)
        cfg = compose("train", args.overrides, run_dir=".")
        check_config(cfg)
        inputs, projection = project_from_config(cfg, args.measure_steps, args.decode_tokens, args.price,
                                                 args.peak_flops)
    result = {"inputs": inputs, "metrics": projection.metrics()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(
            title=f"lmlab cost: {inputs['device']}, {inputs['precision']}, {inputs['world_size']} device(s)"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result["metrics"].items():
            table.add_row(key, f"{value:.2%}" if key == "cost/mfu" else format_quantity(value))
        Console().print(table)
    return result
