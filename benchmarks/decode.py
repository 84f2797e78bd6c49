"""New tokens/s of lmlab's decoding against Hugging Face generate(), and speculative against greedy.

    python benchmarks/decode.py [--new-tokens 64] [--train-steps 300] [--threads 1]

1. The same random HF GPT-2 model and prompts: lmlab greedy / sample / beam_search vs
   model.generate() (outputs compared where deterministic), batch 1 and 8; plus lmlab's own GPT of
   the same shape with lmlab greedy.
2. Speculative decoding: a deep target and a 1-layer draft lmlab GPT, both trained briefly on the
   same bytes (Python stdlib sources), greedy vs speculative with the draft and with prompt lookup.
Prints one JSON object; about 4 minutes on 2 shared CPU cores (mostly the training). Bigger models
and bf16 when CUDA is there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from lmlab.decoding import beam_search, greedy, sample, speculative
from lmlab.models import GPT


def timed(fn, repeats: int):
    """(result, best wall time in s) over ``repeats`` runs after one warm-up."""
    result = fn()
    best = math.inf
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def strategies(hf, ids, n, device) -> dict:
    """name -> (lmlab call, the same through generate()); config has no EOS, so every row makes n tokens."""
    sampling = dict(temperature=0.8, top_k=50, top_p=0.9)
    return {
        "greedy": (lambda: greedy(hf, ids, n), lambda: hf.generate(ids, max_new_tokens=n, do_sample=False)),
        "sample": (lambda: sample(hf, ids, n, generator=torch.Generator(device).manual_seed(0), **sampling),
                   lambda: hf.generate(ids, max_new_tokens=n, do_sample=True, **sampling)),
        "beam4": (lambda: beam_search(hf, ids, n, 4)[0],
                  lambda: hf.generate(ids, max_new_tokens=n, num_beams=4, do_sample=False)),
    }


def versus_generate(args, device, dtype) -> list[dict]:
    cuda = device.type == "cuda"
    shape = dict(n_layer=12, n_embd=768, n_head=12) if cuda else dict(n_layer=4, n_embd=256, n_head=4)
    vocab, context = (50257, 1024) if cuda else (4096, 512)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=context, bos_token_id=1, eos_token_id=None,
                        pad_token_id=1, **shape)
    hf = GPT2LMHeadModel(config).to(device, dtype).eval()
    own = GPT(vocab_size=vocab, block_size=context, **shape).to(device, dtype).eval()
    n, rows = args.new_tokens, []
    for batch in (1, 8):
        ids = torch.randint(2, vocab, (batch, 32), device=device)
        tokens = batch * n
        for strategy, (ours, theirs) in strategies(hf, ids, n, device).items():
            mine, t_mine = timed(ours, args.repeats)
            ref, t_ref = timed(theirs, args.repeats)
            same = None if strategy == "sample" else bool(torch.equal(mine, ref))
            rows.append(dict(model="hf_gpt2", strategy=strategy, batch=batch,
                             lmlab_tok_s=round(tokens / t_mine, 1), generate_tok_s=round(tokens / t_ref, 1),
                             speedup=round(t_ref / t_mine, 2), same_tokens=same))
        _, t_own = timed(lambda ids=ids: greedy(own, ids, n), args.repeats)
        rows.append(dict(model="lmlab_gpt", strategy="greedy", batch=batch,
                         lmlab_tok_s=round(tokens / t_own, 1)))
    return rows


def corpus_bytes(device) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-level tokens of a few stdlib packages (train) and of another one (prompts)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    read = lambda pkgs: b"".join(f.read_bytes() for p in pkgs for f in sorted((stdlib / p).glob("*.py")))
    train, held_out = read(["json", "email", "http", "logging"]), read(["urllib"])
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long().to(device)
    return as_tensor(train), as_tensor(held_out)


def train(model, data, steps, teacher=None, batch=8, block=64, lr=3e-3):
    """Next-byte training with AdamW (warm-up, then linear decay) -> (model in eval mode, last loss).

    With a ``teacher`` the loss is KL(teacher || model) on the same text: the draft is distilled
    from the target, so it agrees with it as often as its size allows."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator(device="cpu").manual_seed(0)
    warmup = max(1, steps // 10)
    for step in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=g).tolist()
        x = torch.stack([data[s : s + block + 1] for s in starts])
        for group in opt.param_groups:
            group["lr"] = lr * min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))
        logits = model(x[:, :-1]).logits.flatten(0, 1).float()
        if teacher is None:
            loss = F.cross_entropy(logits, x[:, 1:].flatten())
        else:
            with torch.no_grad():
                target = teacher(x[:, :-1]).logits.flatten(0, 1).float().log_softmax(-1)
            loss = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


def speculative_vs_greedy(args, device) -> dict:
    train_data, held_out = corpus_bytes(device)
    cuda = device.type == "cuda"
    common = dict(vocab_size=256, block_size=512, position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    target_shape = dict(n_layer=12, n_embd=512, n_head=8) if cuda else dict(n_layer=6, n_embd=128, n_head=4)
    torch.manual_seed(0)
    target = GPT(**common, **target_shape).to(device)
    draft = GPT(**common, n_layer=1, n_embd=128, n_head=4).to(device)
    start = time.perf_counter()
    target, target_loss = train(target, train_data, args.train_steps)
    draft, draft_loss = train(draft, train_data, args.train_steps, teacher=target)
    train_s = time.perf_counter() - start

    n, k = 2 * args.new_tokens, 4
    prompts = [held_out[i : i + 64][None] for i in range(0, 40_000, 10_000)]
    runs = {
        "greedy": lambda p: (greedy(target, p, n), None),
        "speculative_draft": lambda p: speculative(target, draft, p, n, num_draft_tokens=k),
        "speculative_prompt_lookup": lambda p: speculative(target, "prompt_lookup", p, n, num_draft_tokens=k),
        "draft_greedy": lambda p: (greedy(draft, p, n), None),
    }
    out = dict(target=dict(target_shape, params=target.num_params(), train_loss=round(target_loss, 3)),
               draft=dict(n_layer=1, n_embd=128, params=draft.num_params(), distill_kl=round(draft_loss, 3)),
               train_steps=args.train_steps, train_s=round(train_s, 1), new_tokens=n, num_draft_tokens=k)
    reference = {}
    for name, run in runs.items():
        total_s, stats_sum, same = 0.0, {}, True
        for i, p in enumerate(prompts):
            (seq, stats), seconds = timed(lambda p=p, run=run: run(p), args.repeats)
            total_s += seconds
            if name == "greedy":
                reference[i] = seq
            elif name != "draft_greedy":
                same &= bool(torch.equal(seq, reference[i]))
            for key, value in (stats or {}).items():
                if key in ("proposed", "accepted", "target_forwards", "new_tokens"):
                    stats_sum[key] = stats_sum.get(key, 0) + value
        row = dict(tok_s=round(len(prompts) * n / total_s, 1))
        if stats_sum:
            forwards = stats_sum["target_forwards"]
            row.update(acceptance_rate=round(stats_sum["accepted"] / max(stats_sum["proposed"], 1), 3),
                       tokens_per_target_forward=round(stats_sum["new_tokens"] / forwards, 2),
                       same_as_greedy=same)
        out[name] = row
    for name in ("speculative_draft", "speculative_prompt_lookup"):
        out[name]["speedup_vs_greedy"] = round(out[name]["tok_s"] / out["greedy"]["tok_s"], 2)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models: 1 avoids spinning)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()  # generate()'s advice about masks for unpadded prompts
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = dict(device=name,
                  dtype=str(dtype), threads=torch.get_num_threads(), torch=torch.__version__,
                  new_tokens=args.new_tokens)
    result["vs_generate"] = versus_generate(args, device, dtype)
    result["speculative"] = speculative_vs_greedy(args, device)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
