"""The optimizer study's tables from its run directories (the metric each job returned, in status.json).

    python experiments/optimizer_study/summarize.py logs/optimizer_study

Prints the learning-rate search (final val/loss per optimizer and LR) and, for the seeds, each
optimizer's mean, sample standard deviation and range over seeds, and which pairs' means differ by
more than the spread (the larger of the two ranges, max - min over seeds): the only ranking it makes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def completed(folder: Path) -> dict[str, float]:
    """{job directory name: returned metric} of the completed jobs of a sweep directory."""
    out = {}
    for status_file in sorted(folder.glob("*/status.json")):
        status = json.loads(status_file.read_text())
        if status.get("status") == "completed" and status.get("metric") is not None:
            out[status_file.parent.name] = float(status["metric"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the folder holding lr_search/ and seeds/")
    args = parser.parse_args(argv)

    print("| optimizer | lr | val loss |\n|---|---|---|")
    search: dict[str, list[tuple[float, float]]] = {}
    for name, metric in completed(args.study / "lr_search").items():
        optimizer, lr = name.split("_lr")
        search.setdefault(optimizer, []).append((float(lr), metric))
    for optimizer, points in sorted(search.items()):
        best = min(points, key=lambda p: p[1])
        for lr, metric in sorted(points):
            print(f"| {optimizer} | {lr:g} | {'**' if (lr, metric) == best else ''}{metric:.3f}"
                  f"{'**' if (lr, metric) == best else ''} |")

    seeds: dict[str, list[float]] = {}
    for name, metric in completed(args.study / "seeds").items():
        seeds.setdefault(name.rsplit("_seed", 1)[0], []).append(metric)
    rows = sorted((statistics.mean(v), k, v) for k, v in seeds.items())
    print("\n| optimizer | seeds | mean val loss | std | min | max |\n|---|---|---|---|---|---|")
    for mean, optimizer, values in rows:
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"| {optimizer} | {len(values)} | {mean:.3f} | {std:.3f} | {min(values):.3f} | {max(values):.3f} |")
    print()
    for i, (mean_a, a, va) in enumerate(rows):
        for mean_b, b, vb in rows[i + 1:]:
            spread = max(max(va) - min(va), max(vb) - min(vb))
            verdict = f"{a} ahead" if mean_b - mean_a > spread else "not separable"
            print(f"{a} vs {b}: gap {mean_b - mean_a:.3f}, larger range {spread:.3f}: {verdict}")


if __name__ == "__main__":
    main()
