"""Weight-only quantization of a trained run: every goal figure, side by side in one process, as JSON.

    python benchmarks/quantize.py --run logs/train/runs/<run>            # a trained run and its held-out split
    python benchmarks/quantize.py --run <run> --group-size 32 --smoke     # seconds: tiny sizes, same code path
    python benchmarks/quantize.py --run <run> --compile                  # decode speeds with the compiled step

On a CPU shared with other work, wall-clock speeds are noise (and OpenMP threads waiting for a busy
core spin, costing more than the work): ``--threads 1 --cpu-time`` times every speed figure by the
CPU time the process spent instead, which other processes do not inflate.

Models: float32, int8 (its matmuls in the dtype lmlab picks for the device: ``int8_matmul_dtype`` in the
output), int8 with its matmuls in bfloat16 and in float32 (``matmul_dtype``), int4 (``--group-size``,
default 64), int8 and int4 with the embeddings and the LM head quantized as well (``*_all``),
bfloat16, and int8 of the bfloat16 model. For each: weight
bytes (all, and the quantized layers with their scales against the same weights in float32 and
bfloat16), perplexity on the run's validation split, greedy token agreement with float32 over
``--prompts`` validation prompts, and greedy decode tokens/s at batch 1 and 8 (fastest of
``--repeats`` interleaved runs). "goals" holds each goal of the quantization issue with its measured
value; "int8_kernels" times the int8 matmul choices per layer shape, the measurements behind
``lmlab.quantization.int8.int8_matmul``'s choice of kernel.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time

import torch
import torch.nn.functional as F

from lmlab.checkpoint import load_checkpoint, resolve_checkpoint
from lmlab.compare import compare_models
from lmlab.data.saved import run_datamodule
from lmlab.devices import resolve_device, synchronize
from lmlab.quantization import quantize
from lmlab.quantization.int8 import fastest_matmul_dtype, packed_kernel_applies, quantize_int8
from lmlab.quantization.layers import QuantizedWeight

VARIANTS = ("float32", "int8", "int8_bf16_matmul", "int8_fp32_matmul", "int4", "int8_all", "int4_all", "bfloat16",
            "int8_bfloat16")
GOALS = {  # name: (model, figure, target, holds)
    "int8_memory_vs_float32": ("int8", "layer_bytes_vs_float32", "<= 0.27", lambda v: v <= 0.27),
    "int8_memory_vs_bfloat16": ("int8", "layer_bytes_vs_bfloat16", "<= 0.53", lambda v: v <= 0.53),
    "int8_perplexity_change": ("int8", "perplexity_change", "within 1%", lambda v: abs(v) <= 0.01),
    "int8_greedy_agreement": ("int8", "greedy_agreement", ">= 0.90", lambda v: v >= 0.90),
    "int4_memory_vs_bfloat16": ("int4", "layer_bytes_vs_bfloat16", "<= 0.30", lambda v: v <= 0.30),
    "int4_perplexity_change": ("int4", "perplexity_change", "within 5%", lambda v: abs(v) <= 0.05),
    "int8_speed_batch1": ("int8", "speed_vs_float32_batch1", ">= 1 on CPU", lambda v: v >= 1.0),
    "int8_speed_batch8": ("int8", "speed_vs_float32_batch8", ">= 1 on CPU", lambda v: v >= 1.0),
    "int8_bf16_matmul_speed_batch1": ("int8_bf16_matmul", "speed_vs_float32_batch1", ">= 1 on CPU",
                                      lambda v: v >= 1.0),
    "int8_bf16_matmul_speed_batch8": ("int8_bf16_matmul", "speed_vs_float32_batch8", ">= 1 on CPU",
                                      lambda v: v >= 1.0),
    "int8_bf16_matmul_perplexity_change": ("int8_bf16_matmul", "perplexity_change", "within 1%",
                                           lambda v: abs(v) <= 0.01),
}


def build_variants(model, names, group_size: int) -> dict:
    builders = {
        "float32": lambda: model,
        "int8": lambda: quantize(copy.deepcopy(model), "int8"),
        "int8_bf16_matmul": lambda: quantize(copy.deepcopy(model), "int8", matmul_dtype="bfloat16"),
        "int8_fp32_matmul": lambda: quantize(copy.deepcopy(model), "int8", matmul_dtype="float32"),
        "int4": lambda: quantize(copy.deepcopy(model), "int4", group_size=group_size),
        "int8_all": lambda: quantize(copy.deepcopy(model), "int8", embeddings=True),
        "int4_all": lambda: quantize(copy.deepcopy(model), "int4", group_size=group_size, embeddings=True),
        "bfloat16": lambda: copy.deepcopy(model).to(torch.bfloat16),
        "int8_bfloat16": lambda: quantize(copy.deepcopy(model), "int8").to(torch.bfloat16),
    }
    return {name: builders[name]() for name in names}


def time_call(fn, iterations: int, device: torch.device, clock) -> float:
    start = clock()
    for _ in range(iterations):
        fn()
    synchronize(device)
    return (clock() - start) / iterations


def matmul_kernels(x, weight, q, scale, packed: bool) -> dict:
    kernels = {"float_linear": lambda: F.linear(x, weight), "dequantize": lambda: F.linear(x, q.to(x.dtype)) * scale}
    if packed:
        kernels["int8pack_mm"] = lambda: torch._weight_int8pack_mm(x, q, scale)
    return kernels


def int8_kernels(model, device: torch.device, clock, rows=(1, 8), iterations: int = 20, repeats: int = 3
                 ) -> list[dict]:
    """Microseconds per matmul for each distinct layer shape: float weight, dequantize-then-matmul and, on
    CPU, torch._weight_int8pack_mm, in float32 and bfloat16 (the packed kernel only where it is correct)."""
    shapes = sorted({(m.out_features, m.in_features) for m in model.modules() if isinstance(m, QuantizedWeight)})
    results = []
    for (out_features, in_features), m, dtype in itertools.product(shapes, rows, (torch.float32, torch.bfloat16)):
        weight = torch.randn(out_features, in_features, device=device) * 0.02
        q, scale = quantize_int8(weight)
        x = torch.randn(m, in_features, dtype=dtype, device=device)
        packed = device.type == "cpu" and (dtype == torch.float32 or packed_kernel_applies(x, in_features))
        kernels = matmul_kernels(x, weight.to(dtype), q, scale.to(dtype), packed)
        best = {name: float("inf") for name in kernels}
        for _ in range(repeats + 1):
            for name, fn in kernels.items():
                best[name] = min(best[name], time_call(fn, iterations, device, clock))
        results.append({"shape": [out_features, in_features], "rows": m, "dtype": str(dtype).removeprefix("torch."),
                        **{f"{name}_us": round(t * 1e6, 1) for name, t in best.items()}})
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run directory or .ckpt")
    parser.add_argument("--group-size", type=int, default=64, help="int4 group size")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--cpu-time", action="store_true", help="speeds per CPU second (needs --threads 1, CPU)")
    parser.add_argument("--compile", action="store_true", help="time decoding with the compiled decode step")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (seconds)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and (args.threads != 1 or torch.cuda.is_available()):
        parser.error("--cpu-time counts the CPU time of one thread: give --threads 1, on a machine without CUDA")
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.smoke:
        args.prompts, args.new_tokens, args.val_batches, args.repeats = 4, 4, 2, 1
    names = args.variants.split(",")
    if "float32" not in names or not set(names) <= set(VARIANTS):
        parser.error(f"--variants={args.variants}: a subset of {','.join(VARIANTS)} that includes float32")

    ckpt = resolve_checkpoint(args.run, field="--run")
    model, _, _ = load_checkpoint(ckpt, field="--run")
    datamodule = run_datamodule(ckpt)
    if datamodule is None:
        parser.error(f"--run={args.run}: no config.yaml of a language-model run beside the checkpoint")
    prompts = torch.tensor(datamodule.val_prompts(args.prompts, args.prompt_tokens))
    val_batches = list(itertools.islice(datamodule.val_dataloader(), args.val_batches))
    device = resolve_device()
    models = {name: m.to(device) for name, m in build_variants(model, names, args.group_size).items()}
    figures = compare_models(models, "float32", val_batches, prompts, args.new_tokens, repeats=args.repeats,
                             clock=clock, compile=args.compile)

    base = figures["float32"]
    for f in figures.values():
        if f["quantized_weights"]:
            f["layer_bytes_vs_float32"] = f["quantized_layer_bytes"] / (4 * f["quantized_weights"])
            f["layer_bytes_vs_bfloat16"] = f["quantized_layer_bytes"] / (2 * f["quantized_weights"])
        f["weight_bytes_vs_float32"] = f["weight_bytes"] / base["weight_bytes"]
        f["weight_bytes_vs_bfloat16"] = f["weight_bytes"] / (base["weight_bytes"] / 2)
        f["perplexity_change"] = f["perplexity"] / base["perplexity"] - 1
        for b in (1, 8):
            f[f"speed_vs_float32_batch{b}"] = f[f"tokens_per_s_batch{b}"] / base[f"tokens_per_s_batch{b}"]
    goals = {goal: {"model": m, "value": figures[m][key], "target": target, "met": holds(figures[m][key])}
             for goal, (m, key, target, holds) in GOALS.items() if m in figures}
    result = {
        "run": str(ckpt),
        "model": {"params": sum(p.numel() for p in model.parameters()), **model.to_config_dict()},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "int8_matmul_dtype": str(fastest_matmul_dtype(torch.zeros(1, 8, device=device), 8)).removeprefix("torch."),
        "clock": "CPU seconds of the process" if args.cpu_time else "wall-clock seconds",
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("run", "variants")},
                     "val_tokens": sum(b[:, 1:].numel() for b in val_batches)},
        "goals": goals,
        "models": figures,
        "int8_kernels": int8_kernels(models.get("int8") or quantize(copy.deepcopy(model), "int8"), device, clock,
                                     iterations=2 if args.smoke else 20, repeats=args.repeats),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
