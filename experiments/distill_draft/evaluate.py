"""Speculative decoding with a distilled draft against an undistilled one, on held-out prompts.

    python experiments/distill_draft/evaluate.py logs/distill_draft/study [--prompts 24] [--new-tokens 48]

The study directory holds three runs: target/, draft_distilled/ (experiment=distill_draft) and
draft_ce/ (experiment=draft). Prompts are the starts of validation blocks of the target's data
(files no run trained on). For each draft and draft length k:

- next-token agreement with the target and both models' cross-entropy on held-out tokens;
- greedy speculative decoding (temperature 0: lossless, checked token for token against greedy):
  acceptance rate, new tokens per target forward, and wall time against plain greedy decoding,
  measured interleaved in this one process (best of --repeats per prompt, summed over prompts);
- sampled speculative decoding at temperature 1 (rejection sampling): acceptance rate.

Prints one JSON object and writes it to <study dir>/speculative.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.checkpoint import load_checkpoint
from lmlab.decoding import greedy, speculative

DRAFTS = ("draft_distilled", "draft_ce")


def held_out(study: Path, n_prompts: int, prompt_tokens: int, n_blocks: int):
    """(prompts, validation blocks) of the target's data, from its resolved config; both spread evenly over
    the validation split (its files are in order: the first blocks would all be one or two files)."""
    datamodule = instantiate(OmegaConf.load(study / "target" / "config.yaml").data)
    datamodule.prepare_data()
    datamodule.setup()
    picks = np.linspace(0, len(datamodule.val_blocks) - 1, min(n_blocks, len(datamodule.val_blocks))).round()
    blocks = torch.stack([torch.as_tensor(datamodule.val_blocks[int(i)]) for i in picks]).long()
    return datamodule.val_prompts(n_prompts, prompt_tokens), blocks


@torch.no_grad()
def agreement(target, draft, blocks: torch.Tensor) -> dict:
    """Next-token argmax agreement and cross-entropy of both models on held-out blocks."""
    inputs, labels = blocks[:, :-1], blocks[:, 1:]
    p, q = target(inputs).logits.float(), draft(inputs).logits.float()
    ce = lambda logits: F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    return {"top1_agreement": (p.argmax(-1) == q.argmax(-1)).float().mean().item(),
            "target_ce": ce(p), "draft_ce": ce(q),
            "kl_target_draft": F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True,
                                        reduction="batchmean").item() / inputs.shape[1]}


def best_time(fn, repeats: int):
    result, best = None, math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=256, help="held-out blocks for agreement and CE")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    target, tokenizer, _ = load_checkpoint(args.study / "target")
    drafts = {name: load_checkpoint(args.study / name)[0] for name in DRAFTS}
    prompts, blocks = held_out(args.study, args.prompts, args.prompt_tokens, args.blocks)
    results = {"prompts": len(prompts), "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
               "threads": torch.get_num_threads(), "drafts": {}}
    for name, draft in drafts.items():
        results["drafts"][name] = {"params": sum(p.numel() for p in draft.parameters()),
                                   **agreement(target, draft, blocks)}
    results["target_params"] = sum(p.numel() for p in target.parameters())

    warm = torch.tensor([prompts[0]])  # first calls allocate caches and pick kernels: not timed
    greedy(target, warm, args.new_tokens)
    for draft in drafts.values():
        speculative(target, draft, warm, args.new_tokens)
    for k in args.draft_tokens:
        totals = {"greedy_s": 0.0, **{name: dict(spec_s=0.0, accepted=0, proposed=0, forwards=0, new=0,
                                                 sampled_accepted=0, sampled_proposed=0) for name in drafts}}
        for prompt in prompts:
            ids = torch.tensor([prompt])
            reference, t_greedy = best_time(lambda ids=ids: greedy(target, ids, args.new_tokens), args.repeats)
            totals["greedy_s"] += t_greedy
            for name, draft in drafts.items():
                (out, stats), t_spec = best_time(
                    lambda ids=ids, draft=draft, k=k: speculative(target, draft, ids, args.new_tokens,
                                                                  num_draft_tokens=k), args.repeats)
                if not torch.equal(out, reference):
                    raise AssertionError(f"{name}: greedy speculative decoding differs from greedy decoding")
                t = totals[name]
                t["spec_s"] += t_spec
                t["accepted"] += stats["accepted"]
                t["proposed"] += stats["proposed"]
                t["forwards"] += stats["target_forwards"]
                t["new"] += stats["new_tokens"]
                _, sampled = speculative(target, draft, ids, args.new_tokens, num_draft_tokens=k, temperature=1.0,
                                         generator=torch.Generator().manual_seed(0))
                t["sampled_accepted"] += sampled["accepted"]
                t["sampled_proposed"] += sampled["proposed"]
        for name in drafts:
            t = totals[name]
            results["drafts"][name][f"k={k}"] = {
                "acceptance_rate": t["accepted"] / t["proposed"],
                "tokens_per_target_forward": t["new"] / t["forwards"],
                "speedup_over_greedy": totals["greedy_s"] / t["spec_s"],
                "sampled_acceptance_rate": t["sampled_accepted"] / t["sampled_proposed"],
            }
    (args.study / "speculative.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
