"""The stability study's table from its run directories (config.yaml, metrics.csv and status.json).

    python experiments/stability/summarize.py logs/stability/study

Runs are grouped by the settings the study varies, read from each run's resolved config (so the
same setting reached by different overrides is one row, and counted once per seed), and the seeds
of a group are summarised:
the final validation loss (mean, min and max); how many runs' training loss rose above chance
(ln of the vocabulary size: a blow-up, seen even while the spike detector is still warming up);
the loss and grad-norm spikes, non-finite steps and skipped updates the stability callback counted
(summed over seeds); the mean clip rate; and the largest gradient norm before clipping (each run's
largest, median over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from lmlab.report import read_metrics_csv

SETTINGS = {"lr": "optimizer.lr", "precision": "trainer.precision", "clip": "trainer.gradient_clip_val",
            "z-loss": "loss.z_loss", "policy": "callbacks.stability.policy"}
COUNTERS = ("loss_spikes", "grad_norm_spikes", "nonfinite_steps", "skipped_steps")


def summarize_run(run: Path) -> tuple[tuple, int, dict]:
    """(the settings, the seed, the run's figures)."""
    config = OmegaConf.load(run / "config.yaml")
    setting = tuple(OmegaConf.select(config, key) for key in SETTINGS.values())
    metrics = read_metrics_csv(run / "metrics.csv")
    status = json.loads((run / "status.json").read_text())
    counts = {c: metrics[f"stability/{c}"][1][-1] if f"stability/{c}" in metrics else math.nan for c in COUNTERS}
    clip_rate = metrics["stability/clip_rate"][1].mean() if "stability/clip_rate" in metrics else None
    return setting, config.seed, {"val_loss": status.get("metric") or math.nan, "clip_rate": clip_rate,
                     "above_chance": metrics["train/loss"][1].max() > math.log(config.data.vocab_size),
                     "max_grad_norm": metrics["stability/grad_norm"][1].max(), **counts}


def show(value) -> str:
    return "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the sweep directory of sweep=stability")
    args = parser.parse_args(argv)
    groups: dict[tuple, dict[int, dict]] = {}
    for run in sorted(args.study.iterdir()):
        if (run / "status.json").is_file() and json.loads((run / "status.json").read_text())["status"] == "completed":
            setting, seed, row = summarize_run(run)
            groups.setdefault(setting, {})[seed] = row

    columns = [*SETTINGS, "seeds", "final val loss: mean (min - max)", "loss above chance", "loss spikes",
               "grad-norm spikes", "non-finite steps", "skipped", "clip rate", "max grad norm (median)"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for setting, by_seed in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        rows = list(by_seed.values())
        losses = [r["val_loss"] for r in rows]
        clip_rates = [r["clip_rate"] for r in rows if r["clip_rate"] is not None]
        cells = [
            *(show(value) for value in setting),
            str(len(rows)),
            f"{statistics.mean(losses):.3f} ({min(losses):.3f} - {max(losses):.3f})",
            f"{sum(r['above_chance'] for r in rows)} of {len(rows)}",
            *(f"{sum(r[c] for r in rows):.0f}" for c in COUNTERS),
            f"{statistics.mean(clip_rates):.2f}" if clip_rates else "off",
            f"{statistics.median(r['max_grad_norm'] for r in rows):.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
