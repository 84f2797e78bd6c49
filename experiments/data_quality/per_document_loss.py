"""Validation loss split by the data audit: the validation documents that share a 13-gram of words with training
against the others, and the tokens inside shared 13-grams against the rest (experiments/data_quality/README.md).

    python experiments/data_quality/per_document_loss.py logs/data_quality/contamination --json contamination.json

For each run (a run directory, or every job of a multirun directory) the run's data module is rebuilt from its
config.yaml, its audit read (``split.val`` and ``split_tokens.val`` place every validation document in the packed
validation tokens) and ``checkpoints/best.ckpt`` scores the validation tokens in consecutive blocks of
``data.block_size`` (each token predicted from at most block_size earlier ones, as ``val/loss`` does). Runs that
differ only in their seed form a group, reported as mean and standard deviation over seeds. Across groups, the
loss on the clean validation documents common to every run compares arms whose splits differ at the boundary.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.checkpoint import load_checkpoint
from lmlab.data.contamination import covered_token_mask, overlaps
from lmlab.data.ngrams import split_words
from lmlab.report.runs import run_overrides


def run_dirs(path: Path) -> list[Path]:
    if (path / "checkpoints" / "best.ckpt").is_file():
        return [path]
    runs = sorted(d for d in path.iterdir() if (d / "checkpoints" / "best.ckpt").is_file())
    if not runs:
        raise SystemExit(f"{path}: no run directory with checkpoints/best.ckpt")
    return runs


@torch.no_grad()
def token_losses(model: torch.nn.Module, tokens: np.ndarray, block_size: int, batch: int = 64) -> np.ndarray:
    """The loss of every token given the ones before it in its block of ``block_size + 1`` tokens (blocks overlap
    by one token, so every token but the first is predicted once); NaN for the first."""
    ids = torch.from_numpy(tokens.astype(np.int64))
    full = (len(ids) - 1) // block_size
    blocks = [ids[: full * block_size + 1].unfold(0, block_size + 1, block_size)]
    if len(ids) - 1 > full * block_size:  # the shorter last block
        blocks.append(ids[full * block_size:][None])
    model.eval()
    scored = []
    for group in blocks:
        for chunk in group.split(batch):
            logits = model(chunk[:, :-1]).logits.float()
            scored.append(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="none"))
    return np.concatenate([[np.nan], torch.cat(scored).double().numpy()])


def document_masks(audit: dict, documents: dict[str, str], tokenizer) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(validation document index of every validation token, whether the token lies inside a 13-gram shared with
    training, ids of the validation documents that share one): the audit's rule, recomputed per token."""
    train_ids, val_ids = audit["split"]["train"], audit["split"]["val"]
    ids = train_ids + val_ids
    words = split_words([documents[i] for i in ids])
    flagged, covered_words = overlaps(words, range(len(train_ids)), range(len(train_ids), len(ids)))
    lengths = np.asarray(audit["split_tokens"]["val"])
    covered = np.zeros(int(lengths.sum()), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for d in flagged:
        v = d - len(train_ids)
        encoding = tokenizer.backend_tokenizer.encode(documents[ids[d]], add_special_tokens=False)
        if len(encoding.ids) + 1 != lengths[v]:
            raise SystemExit(f"{ids[d]}: {len(encoding.ids)} tokens + EOS, but the audit packed {lengths[v]}")
        own = covered_words[words.starts[d]:words.starts[d + 1]]
        covered[starts[v]:starts[v] + len(encoding.ids)] = covered_token_mask(documents[ids[d]], own, encoding.offsets)
    return np.repeat(np.arange(len(val_ids)), lengths), covered, [ids[d] for d in flagged]


def measure(run: Path) -> dict:
    """One run's validation loss, overall and split by the audit, and each validation document's (sum, count)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = instantiate(cfg.data, _convert_="all")
    audit = datamodule.audit()
    datamodule.setup()
    packed = datamodule.packed
    model, tokenizer, _ = load_checkpoint(run / "checkpoints" / "best.ckpt")
    losses = token_losses(model, np.asarray(packed.tokens()[packed.val_start:]), datamodule.block_size)
    document, covered, flagged = document_masks(audit, dict(datamodule.corpus), tokenizer)
    if len(document) != len(losses):
        raise SystemExit(f"{run}: the audit places {len(document)} validation tokens, the packed file holds "
                         f"{len(losses)}")
    scored = ~np.isnan(losses)
    val_ids = audit["split"]["val"]
    in_flagged = np.isin(document, [val_ids.index(i) for i in flagged])

    def mean(mask: np.ndarray) -> float | None:
        return float(losses[mask & scored].mean()) if (mask & scored).any() else None

    per_document = {val_ids[d]: (float(losses[(document == d) & scored].sum()), int(((document == d) & scored).sum()))
                    for d in range(len(val_ids))}
    return {"run": run.name, "overrides": run_overrides(run), "val_documents": len(val_ids),
            "overlap_documents": len(flagged), "val_tokens": int(scored.sum()), "loss": mean(scored),
            "loss_overlap_documents": mean(in_flagged), "loss_clean_documents": mean(~in_flagged),
            "tokens_overlap_documents": int((in_flagged & scored).sum()), "loss_covered_tokens": mean(covered),
            "loss_uncovered_tokens": mean(~covered), "covered_tokens": int((covered & scored).sum()),
            "clean_documents": [i for i in val_ids if i not in set(flagged)], "per_document": per_document}


METRICS = ("loss", "loss_overlap_documents", "loss_clean_documents", "loss_covered_tokens", "loss_uncovered_tokens")


def summarize(results: list[dict]) -> dict:
    """Per group of runs (their overrides but the seed): each metric's mean and standard deviation over seeds; and
    every group's loss on the clean validation documents that all runs share."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        key = " ".join(o for o in result["overrides"] if not o.startswith("seed=")) or "(defaults)"
        groups.setdefault(key, []).append(result)
    common = set.intersection(*(set(r["clean_documents"]) for r in results))
    summary = {"common_clean_documents": len(common), "groups": {}}
    for key, runs in groups.items():
        row = {"seeds": len(runs)}
        for metric in (*METRICS, "loss_common_clean"):
            values = [r[metric] if metric != "loss_common_clean" else _loss_on(r, common) for r in runs]
            values = [v for v in values if v is not None]
            row[metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) \
                if values else None
        summary["groups"][key] = row
    return summary


def _loss_on(result: dict, documents: set[str]) -> float | None:
    total, count = (sum(result["per_document"][d][k] for d in documents) for k in (0, 1))
    return total / count if count else None


def table(summary: dict) -> str:
    header = "| runs | seeds | " + " | ".join(METRICS) + " | loss on the common clean documents |"
    lines = [header, "|" + "---|" * (len(METRICS) + 3)]
    for key, row in summary["groups"].items():
        cells = [f"{row[m][0]:.4f} ± {row[m][1]:.4f}" if row[m] else "—" for m in (*METRICS, "loss_common_clean")]
        lines.append(f"| {key} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{summary['common_clean_documents']} clean validation documents common to every run"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run directory or a multirun directory")
    parser.add_argument("--json", type=Path, help="write every run's figures and the summary as JSON")
    args = parser.parse_args(argv)
    results = [measure(run) for run in run_dirs(args.path)]
    summary = summarize(results)
    print(table(summary))
    out = {"runs": [{k: v for k, v in r.items() if k != "per_document"} for r in results], "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
