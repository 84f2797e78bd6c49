"""New tokens/s of lmlab's decoding, eager and compiled, against Hugging Face generate(); speculative decoding.

    python benchmarks/decode.py [--configs gpt_tiny:1,8,32 gpt_small:1] [--new-tokens 64] [--repeats 2]
                                [--train-steps 150] [--smoke]

1. ``vs_generate``: lmlab's GPT of a shipped shape (conf/model) and a Hugging Face GPT2LMHeadModel
   holding the same weights. Per batch size, greedy and sampling (and 4-beam search at batch 1):
   lmlab eager (dynamic cache), lmlab compiled (static cache + compiled step, ``compile=True``),
   ``generate()`` and ``generate(cache_implementation="static")`` (which generate() itself compiles
   on CUDA). The variants take turns and each keeps its best time; greedy outputs are compared.
2. ``where_time_goes`` (batch 1): per-token time of the eager and the compiled step next to the time
   of the same weight matmuls alone, so what compile can remove (everything but the matmuls) is
   measured, not guessed.
3. ``speculative``: a target trained by lmlab (``python train.py``) and a 1-layer draft distilled from
   it (``experiment=distill_draft``, loss=distill), on the stdlib corpus; greedy vs speculative with the
   draft and with prompt lookup, eager and compiled, on held-out prompts.

bf16 on CUDA, float32 on CPU. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import DEVICE, device_info, run_config, run_quietly, shipped_model_node, train_py
from hydra.utils import instantiate

from lmlab.decoding import beam_search, greedy, sample, speculative
from lmlab.devices import synchronize
from lmlab.models import GPT

SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)


def race(fns: dict, repeats: int) -> tuple[dict, dict]:
    """(results, best seconds) per name: one warm-up call each (compiles), then ``repeats`` rounds in turn.

    A call that fails in its warm-up (generate()'s static cache on some versions) is not timed: its
    result is the error, its time inf."""
    results, best = {}, {}
    for name, fn in fns.items():
        try:
            results[name], best[name] = fn(), math.inf
        except Exception as e:  # noqa: BLE001 - reported in the JSON instead of aborting the benchmark
            results[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for _ in range(repeats):
        for name in best:
            synchronize(DEVICE)
            start = time.perf_counter()
            results[name] = fns[name]()
            synchronize(DEVICE)
            best[name] = min(best[name], time.perf_counter() - start)
    return results, {name: best.get(name, math.inf) for name in fns}


def shipped_gpt(name: str, vocab_size: int, device, dtype) -> GPT:
    """conf/model/<name>.yaml as train.py builds it, random weights."""
    torch.manual_seed(0)
    return instantiate(shipped_model_node(name, vocab_size)).to(device, dtype).eval()


def as_hf_gpt2(gpt: GPT):
    """A transformers GPT2LMHeadModel with the same weights (GPT-2-style lmlab shapes only)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = gpt.config
    if c.position != "learned" or c.norm != "layernorm" or c.mlp != "standard" or c.activation != "gelu":
        raise SystemExit(f"{c}: only GPT-2-style shapes have a GPT2LMHeadModel twin")
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=1, eos_token_id=None, pad_token_id=1)
    hf = GPT2LMHeadModel(config)
    state = {"transformer.wte.weight": gpt.wte.weight, "transformer.wpe.weight": gpt.wpe.weight,
             "transformer.ln_f.weight": gpt.norm_f.weight, "transformer.ln_f.bias": gpt.norm_f.bias}
    for i, block in enumerate(gpt.blocks):
        ours = {"ln_1": block.norm1, "ln_2": block.norm2, "attn.c_attn": block.attn.qkv,
                "attn.c_proj": block.attn.proj, "mlp.c_fc": block.mlp.up, "mlp.c_proj": block.mlp.down}
        for theirs, module in ours.items():
            transpose = theirs.startswith(("attn", "mlp"))  # GPT-2's Conv1D stores [in, out]
            state[f"transformer.h.{i}.{theirs}.weight"] = module.weight.T if transpose else module.weight
            state[f"transformer.h.{i}.{theirs}.bias"] = module.bias
    missing = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False).missing_keys
    if set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GPT-2 weights not set: {missing}")
    hf.tie_weights()
    p = gpt.wte.weight
    return hf.to(p.device, p.dtype).eval()


def strategy_calls(gpt, hf, ids, n, compile) -> dict:
    """strategy -> variant -> call; the HF config has no EOS, so every row makes n tokens."""
    device = ids.device
    seed = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    generate = lambda **kw: lambda: hf.generate(ids, max_new_tokens=n, **kw)  # noqa: E731
    static = dict(cache_implementation="static")
    calls = {
        "greedy": {"lmlab_eager": lambda: greedy(gpt, ids, n),
                   "lmlab_compiled": lambda: greedy(gpt, ids, n, compile=compile),
                   "generate": generate(do_sample=False), "generate_static": generate(do_sample=False, **static)},
        "sample": {"lmlab_eager": lambda: sample(gpt, ids, n, generator=seed(), **SAMPLING),
                   "lmlab_compiled": lambda: sample(gpt, ids, n, generator=seed(), compile=compile, **SAMPLING),
                   "generate": generate(do_sample=True, **SAMPLING),
                   "generate_static": generate(do_sample=True, **SAMPLING, **static)},
    }
    if len(ids) == 1:
        calls["beam4"] = {"lmlab_eager": lambda: beam_search(gpt, ids, n, 4)[0],
                          "lmlab_compiled": lambda: beam_search(gpt, ids, n, 4, compile=compile)[0],
                          "generate": generate(num_beams=4, do_sample=False)}
    return calls


def versus_generate(args, device, dtype, rows: list) -> None:
    for config in args.configs:
        name, batches = config.split(":")
        gpt = shipped_gpt(name, args.vocab_size, device, dtype)
        hf = as_hf_gpt2(gpt)
        n = min(args.new_tokens, gpt.config.block_size - args.prompt_len)
        for batch in (int(b) for b in batches.split(",")):
            ids = torch.randint(2, args.vocab_size, (batch, args.prompt_len), device=device)
            for strategy, calls in strategy_calls(gpt, hf, ids, n, args.compile).items():
                if strategy not in args.strategies:
                    continue
                if args.generate_static_batches is not None and batch not in args.generate_static_batches:
                    calls.pop("generate_static", None)
                outputs, seconds = race(calls, args.repeats)
                row = dict(model=name, strategy=strategy, batch=batch, new_tokens=n)
                row |= {f"{v}_tok_s": round(batch * n / s, 1) if s < math.inf else outputs[v]
                        for v, s in seconds.items()}
                for other in ("lmlab_eager", "generate"):
                    if seconds.get(other, math.inf) < math.inf and seconds["lmlab_compiled"] < math.inf:
                        row[f"compiled_vs_{other.removeprefix('lmlab_')}"] = round(
                            seconds[other] / seconds["lmlab_compiled"], 2)
                if strategy == "greedy":
                    row["same_tokens"] = {v: bool(torch.equal(outputs["lmlab_eager"], out))
                                          for v, out in outputs.items() if isinstance(out, torch.Tensor)}
                rows.append(row)


def where_time_goes(args, device, dtype, rows: list) -> None:
    """Batch-1 time per token: the eager step, the compiled step, and the weight matmuls alone."""
    for config in args.configs:
        rows.append(time_split(config.split(":")[0], args, device, dtype))


def time_split(name: str, args, device, dtype) -> dict:
    gpt = shipped_gpt(name, args.vocab_size, device, dtype)
    n = min(args.new_tokens, gpt.config.block_size - args.prompt_len)
    ids = torch.randint(2, args.vocab_size, (1, args.prompt_len), device=device)
    linears = [m for m in gpt.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, 1, m.in_features, device=device, dtype=dtype) for m in linears]

    @torch.no_grad()
    def matmuls():
        for _ in range(n):
            for m, x in zip(linears, inputs, strict=True):
                F.linear(x, m.weight, m.bias)

    _, seconds = race({"eager": lambda: greedy(gpt, ids, n),
                       "compiled": lambda: greedy(gpt, ids, n, compile=args.compile),
                       "matmuls": matmuls}, args.repeats)
    per_token = {k: v / n for k, v in seconds.items()}
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    return dict(
        model=name, params=sum(p.numel() for p in gpt.parameters()), linear_layers=len(linears),
        eager_ms_per_token=round(1e3 * per_token["eager"], 3),
        compiled_ms_per_token=round(1e3 * per_token["compiled"], 3),
        matmuls_ms_per_token=round(1e3 * per_token["matmuls"], 3),
        matmul_share_of_eager=round(per_token["matmuls"] / per_token["eager"], 3),
        matmul_share_of_compiled=round(per_token["matmuls"] / per_token["compiled"], 3),
        weight_read_gb_per_s=round(weight_bytes / per_token["matmuls"] / 1e9, 2),
        compiled_vs_eager=round(per_token["eager"] / per_token["compiled"], 2))


def train_target_and_draft(args, root: Path) -> tuple[Path, Path]:
    """`python train.py` runs: a target, then a 1-layer draft distilled from it (loss=distill). -> run dirs."""
    steps = args.train_steps
    common = [f"model={args.spec_model}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
              f"sched.warmup_steps={max(1, steps // 10)}", "callbacks=model_checkpoint", "logger=csv",
              "trainer.limit_val_batches=4", "samples.num_prompts=0", *args.override]
    target, draft = root / "target", root / "draft"
    train_py(common, target)
    train_py([*common, "experiment=distill_draft", f"loss.teacher={target}"], draft)
    return target, draft


def speculative_vs_greedy(args, device, dtype, out: dict) -> None:
    from lmlab.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="decode_spec_") as tmp:
        target_dir, draft_dir = train_target_and_draft(args, Path(tmp))
        target, tokenizer, _ = load_checkpoint(target_dir)
        draft, _, _ = load_checkpoint(draft_dir)
        datamodule = instantiate(run_config(target_dir).data)  # the target's own data
        datamodule.prepare_data()
        prompts = datamodule.val_prompts(args.spec_prompts, args.prompt_len)
    target, draft = target.to(device, dtype), draft.to(device, dtype)
    n, k = min(2 * args.new_tokens, target.config.block_size - args.prompt_len), 4
    runs = {
        "greedy": lambda p, c: (greedy(target, p, n, compile=c and args.compile), None),
        "speculative_draft": lambda p, c: speculative(target, draft, p, n, num_draft_tokens=k,
                                                      compile=c and args.compile),
        "speculative_prompt_lookup": lambda p, c: speculative(target, "prompt_lookup", p, n, num_draft_tokens=k,
                                                              compile=c and args.compile),
    }
    out.update(target=dict(model=args.spec_model, params=target.num_params()),
               draft=dict(n_layer=draft.config.n_layer, params=draft.num_params(), loss="distill"),
               train_steps=args.train_steps, prompts=len(prompts), new_tokens=n, num_draft_tokens=k)
    reference = {}
    for compiled in (False, True):  # every eager row first: a time limit cuts compiled rows only
        for name, run in runs.items():
            total, stats_sum, same = 0.0, {}, True
            for i, ids in enumerate(prompts):
                call = functools.partial(run, torch.tensor([ids], device=device), compiled)
                results, seconds = race({"run": call}, args.repeats)
                seq, stats = results["run"]
                total += seconds["run"]
                if name == "greedy" and not compiled:
                    reference[i] = seq
                same &= bool(torch.equal(seq, reference[i]))
                for key in ("proposed", "accepted", "target_forwards", "new_tokens"):
                    stats_sum[key] = stats_sum.get(key, 0) + (stats or {}).get(key, 0)
            row = dict(tok_s=round(len(prompts) * n / total, 1), same_as_greedy=same)
            if stats_sum["target_forwards"]:
                row |= dict(acceptance_rate=round(stats_sum["accepted"] / max(stats_sum["proposed"], 1), 3),
                            tokens_per_target_forward=round(stats_sum["new_tokens"] / stats_sum["target_forwards"], 2))
            row["speedup_vs_greedy_eager"] = round(row["tok_s"] / out.get("greedy_eager", row)["tok_s"], 2)
            out[f"{name}_{'compiled' if compiled else 'eager'}"] = row


@run_quietly
def main(argv: list[str] | None, result: dict) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=["gpt_small:1,8,32"] if cuda else ["gpt_tiny:1,8,32",
                                                                                         "gpt_small:1"],
                        help="<conf/model option>:<batch sizes>")
    parser.add_argument("--vocab-size", type=int, default=50257 if cuda else 4096,
                        help="of the vs_generate models (GPT-2's on CUDA; lmlab's tokenizer's on CPU)")
    parser.add_argument("--new-tokens", type=int, default=256 if cuda else 64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--spec-model", default="gpt_small" if cuda else "gpt_tiny", help="the speculative target")
    parser.add_argument("--spec-prompts", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=150, help="of the target and of the distilled draft")
    parser.add_argument("--override", nargs="*", default=[], help="train.py overrides for the speculative runs")
    parser.add_argument("--sections", nargs="*", default=["vs_generate", "where_time_goes", "speculative"])
    parser.add_argument("--strategies", nargs="*", default=["greedy", "sample", "beam4"])
    parser.add_argument("--generate-static-batches", nargs="*", type=int,
                        help="batch sizes with a generate_static row (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (decoding small models: 1 avoids spinning)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long check that the benchmark runs (dynamo's eager backend, 4 tokens)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.new_tokens, args.repeats, args.train_steps, args.spec_prompts = 4, 1, 2, 1
        args.compile_backend, args.strategies = "eager", ["greedy"]
    args.compile = True if args.compile_backend == "inductor" else args.compile_backend
    if not cuda:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate()'s advice about masks for unpadded prompts
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    result.update(device_info(), benchmark="decode", dtype=str(dtype), new_tokens=args.new_tokens)
    sections = {"vs_generate": (versus_generate, list), "where_time_goes": (where_time_goes, list),
                "speculative": (speculative_vs_greedy, dict)}
    for name in args.sections:
        run, container = sections[name]
        result[name] = container()
        run(args, device, dtype, result[name])


if __name__ == "__main__":
    main()
