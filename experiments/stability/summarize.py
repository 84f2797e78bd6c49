"""The stability study's table from its run directories (metrics.csv and status.json of each job).

    python experiments/stability/summarize.py logs/stability/study

One row per job, named by its overrides: the validation loss it returned, the loss and grad-norm
spikes and non-finite steps the stability callback counted, the updates the `skip` policy dropped,
the mean clip rate over the logged windows and the largest gradient norm before clipping.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lmlab.cli.report import read_metrics_csv

COLUMNS = ("setting", "final val loss", "loss spikes", "grad-norm spikes", "non-finite steps", "skipped steps",
           "clip rate", "max grad norm")


def row(run: Path) -> list[str]:
    metrics = read_metrics_csv(run / "metrics.csv")
    status = json.loads((run / "status.json").read_text())

    def last(key: str) -> float:
        return metrics[key][1][-1] if key in metrics else math.nan

    setting = " ".join(o for o in status["overrides"] if not o.startswith("sweep=")) or "experiment=stability"
    clipping = "stability/clip_rate" in metrics  # logged only when the run clips
    clip_rate = f"{metrics['stability/clip_rate'][1].mean():.2f}" if clipping else "off"
    return [setting, f"{status.get('metric') or math.nan:.3f}", f"{last('stability/loss_spikes'):.0f}",
            f"{last('stability/grad_norm_spikes'):.0f}", f"{last('stability/nonfinite_steps'):.0f}",
            f"{last('stability/skipped_steps'):.0f}", clip_rate,
            f"{metrics['stability/grad_norm'][1].max():.2f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the sweep directory of sweep=stability")
    args = parser.parse_args(argv)
    runs = sorted(d for d in args.study.iterdir() if (d / "metrics.csv").is_file() and (d / "status.json").is_file())
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for run in runs:
        print("| " + " | ".join(row(run)) + " |")


if __name__ == "__main__":
    main()
