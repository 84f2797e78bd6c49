"""The μP transfer study's plot and tables from its multirun directory (sweep=mup_transfer).

    python experiments/mup_transfer/plot.py logs/mup_transfer/grid [--out experiments/mup_transfer]

Reads each job's config.yaml (model.parametrization, model.n_embd, optimizer.lr, seed) and the metric it
returned (status.json, else the last val/loss of metrics.csv), averages the seeds, and writes transfer.png
(final val loss against log2 LR, one curve per width, standard and μP side by side) and prints, per
parametrization and width, the best log2 LR, the shift of the best LR across widths in grid steps and, for
every width, the loss at the LR chosen on the narrowest width against that width's best (the goals).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from lmlab.report.runs import load_runs, objective


def collect(grid: Path) -> dict[tuple[str, int], dict[float, list[float]]]:
    """{(parametrization, width): {log2 lr: [final loss per seed]}}; diverged runs (non-finite) count as inf."""
    points: dict[tuple[str, int], dict[float, list[float]]] = {}
    for run in load_runs(grid):
        config = run.config
        key = (str(config.get("model.parametrization", "standard")), int(config["model.n_embd"]))
        value = objective(run, "val/loss")
        loss = value if value is not None and math.isfinite(value) else math.inf
        points.setdefault(key, {}).setdefault(math.log2(float(config["optimizer.lr"])), []).append(loss)
    return points


def summarize(points: dict[tuple[str, int], dict[float, list[float]]]) -> list[str]:
    """Markdown lines: best log2 LR per width, its shift across widths, and the narrowest width's LR
    carried to every width (gap to that width's best, in %)."""
    lines = ["| parametrization | n_embd | best log2 lr | best loss | loss at the narrowest's lr | gap |",
             "|---|---|---|---|---|---|"]
    verdicts = []
    for parametrization in sorted({p for p, _ in points}, key=lambda p: p != "standard"):
        widths = sorted(w for p, w in points if p == parametrization)
        means = {w: {lr: statistics.mean(v) for lr, v in points[parametrization, w].items()} for w in widths}
        best = {w: min(means[w], key=means[w].get) for w in widths}
        chosen = best[widths[0]]
        for w in widths:
            carried = means[w].get(chosen, math.inf)
            gap = 100 * (carried / means[w][best[w]] - 1)
            lines.append(f"| {parametrization} | {w} | {best[w]:g} | {means[w][best[w]]:.4f} | {carried:.4f} | "
                         f"{gap:.2f}% |")
        shift = max(best.values()) - min(best.values())
        verdicts.append(f"{parametrization}: the best log2 lr moves by {shift:g} grid steps across widths "
                        f"{widths[0]}..{widths[-1]}")
    return [*lines, "", *verdicts]


def plot(points: dict[tuple[str, int], dict[float, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parametrizations = sorted({p for p, _ in points}, key=lambda p: p != "standard")
    widths = sorted({w for _, w in points})
    finite = [statistics.mean(v) for curve in points.values() for v in curve.values()
              if math.isfinite(statistics.mean(v))]
    top = min(max(finite), min(finite) + 2.0) if finite else 1.0
    fig, axes = plt.subplots(1, len(parametrizations), figsize=(5 * len(parametrizations), 4), sharey=True,
                             squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, parametrization in zip(axes[0], parametrizations, strict=True):
        for i, w in enumerate(widths):
            curve = points.get((parametrization, w))
            if not curve:
                continue
            lrs = sorted(curve)
            losses = [min(statistics.mean(curve[lr]), top) for lr in lrs]  # diverged runs drawn at the top
            ax.plot(lrs, losses, marker="o", color=colors(i / max(len(widths) - 1, 1)), label=f"n_embd {w}")
        ax.set_title({"mup": "μP"}.get(parametrization, parametrization))
        ax.set_xlabel("log2 learning rate (AdamW)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final val loss (mean over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="the multirun directory of sweep=mup_transfer")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where transfer.png goes")
    args = parser.parse_args(argv)
    points = collect(args.grid)
    print("\n".join(summarize(points)))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(points, args.out / "transfer.png")
    print(f"\nwrote {args.out / 'transfer.png'}")


if __name__ == "__main__":
    main()
