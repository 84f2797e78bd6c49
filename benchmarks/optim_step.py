"""Time one optimizer step: lmlab's Adam/AdamW against torch's AdamW (foreach, fused, single-tensor).

    python benchmarks/optim_step.py [--steps 20] [--repeats 7] [--threads N]
    python benchmarks/optim_step.py --smoke      # seconds: tiny shapes, one step, checks the script runs

All optimizers step the same parameter shapes: GPT-2 124M on a GPU, a small GPT on CPU. Param groups
as in training (matrices decayed, the rest not). Measurements are interleaved round-robin, so load on a
shared machine hits every optimizer alike; the median ms/step and the ratio to torch's foreach AdamW
are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lmlab.devices import resolve_device, synchronize
from lmlab.optim import Adam, AdamW


def gpt_shapes(vocab: int, block: int, n_layer: int, n_embd: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2 style model (tied head), in module order."""
    layer = [
        (n_embd,), (n_embd,),  # ln_1
        (3 * n_embd, n_embd), (3 * n_embd,),  # attention qkv
        (n_embd, n_embd), (n_embd,),  # attention proj
        (n_embd,), (n_embd,),  # ln_2
        (4 * n_embd, n_embd), (4 * n_embd,),  # mlp up
        (n_embd, 4 * n_embd), (n_embd,),  # mlp down
    ]  # fmt: skip
    return [(vocab, n_embd), (block, n_embd)] + layer * n_layer + [(n_embd,), (n_embd,)]


def make_params(shapes, device):
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-2
    return params


def groups(params):
    return [
        {"params": [p for p in params[2:] if p.ndim == 2], "weight_decay": 0.1},
        {"params": params[:2] + [p for p in params[2:] if p.ndim < 2], "weight_decay": 0.0},
    ]


def contenders(device: torch.device) -> dict:
    kwargs = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)

    def with_skip_flag(opt):
        opt.skip_step = torch.tensor(False, device=device)  # how the stability callback runs it
        return opt

    made = {
        "torch_adamw_foreach": lambda ps: torch.optim.AdamW(groups(ps), foreach=True, **kwargs),
        "torch_adamw_single_tensor": lambda ps: torch.optim.AdamW(groups(ps), foreach=False, **kwargs),
        "lmlab_adamw": lambda ps: AdamW(groups(ps), **kwargs),
        "lmlab_adamw_skip_flag": lambda ps: with_skip_flag(AdamW(groups(ps), **kwargs)),
        "lmlab_adam": lambda ps: Adam(groups(ps), **kwargs),
    }
    try:
        probe = torch.zeros(2, device=device, requires_grad=True)
        probe.grad = torch.zeros(2, device=device)
        torch.optim.AdamW([probe], fused=True).step()
        made["torch_adamw_fused"] = lambda ps: torch.optim.AdamW(groups(ps), fused=True, **kwargs)
    except (RuntimeError, ValueError):
        pass  # fused AdamW is not built for this device
    return made


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per optimizer (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one step: checks the script runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device()
    if args.smoke:
        args.steps, args.repeats = 1, 1
        shape_name, shapes = "tiny gpt (vocab 64, 1 layer, 16 wide)", gpt_shapes(64, 16, 1, 16)
    elif device.type == "cuda":
        shape_name, shapes = "gpt2-124M", gpt_shapes(50257, 1024, 12, 768)
    else:
        shape_name, shapes = "small gpt (vocab 4096, 2 layers, 128 wide)", gpt_shapes(4096, 256, 2, 128)

    optimizers = {}
    for name, make in contenders(device).items():
        params = make_params(shapes, device)
        optimizers[name] = make(params)
        for _ in range(3):  # create state, warm up kernels
            optimizers[name].step()
    times = {name: [] for name in optimizers}
    for _ in range(args.repeats):
        for name, optimizer in optimizers.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    median_ms = {name: statistics.median(t) for name, t in times.items()}
    base = median_ms["torch_adamw_foreach"]
    on_gpu = device.type == "cuda"
    report = {
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "shapes": shape_name,
        "num_params": sum(torch.Size(s).numel() for s in shapes),
        "num_tensors": len(shapes),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "ms_per_step": {k: round(v, 4) for k, v in median_ms.items()},
        "ratio_to_torch_adamw_foreach": {k: round(v / base, 3) for k, v in median_ms.items()},
        "goal": "lmlab_adamw <= 1.1 x torch_adamw_foreach",
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
