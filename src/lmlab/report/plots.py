"""The report's plots, one function per figure: matplotlib Figures (no pyplot state), the runs overlaid, the
legend beside the axes."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lmlab.report.labels import differing_overrides, override_key
from lmlab.report.runs import Run, objective


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure(title: str, ylabel: str, log_y: bool = False, xlabel: str = "step"):
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if log_y:
        ax.set_yscale("log")
    return fig, ax


def _color(i: int, n: int = 10) -> str | tuple:
    """Distinct colours: matplotlib's 10-colour cycle, tab20 up to 20 runs, viridis beyond."""
    if n <= 10:
        return f"C{i % 10}"
    return colormaps["tab20"](i % 20) if n <= 20 else colormaps["viridis"](i / max(n - 1, 1))


def _finish(fig: Figure, ax, drawn: bool, runs: list[Run] | None = None, styles: dict | None = None) -> Figure | None:
    """The legend outside the axes, right of the plot, so it never covers a curve: one entry per run
    (colour) and one per line style, instead of one per curve."""
    if not drawn:
        return None
    handles = []
    if runs is not None and len(runs) > 1:
        handles += [Line2D([], [], color=_color(i, len(runs)), lw=2, label=run.label) for i, run in enumerate(runs)]
    handles += [Line2D([], [], label=label, **({"color": "0.3"} | style)) for label, style in (styles or {}).items()]
    if not handles:
        handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              ncols=1 if len(handles) <= 24 else 2)
    return fig


def plot_loss(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Loss", "cross-entropy (nats)")
    styles = {"train/loss": dict(lw=1, alpha=0.6), "val/loss": dict(lw=2, marker="o", ms=4)}
    drawn = False
    for i, run in enumerate(runs):
        for key, style in styles.items():
            s = run.series(key)
            if s is not None:
                ax.plot(*s, color=_color(i, len(runs)), label=key, **style)
                drawn = True
    return _finish(fig, ax, drawn, runs, styles)


def plot_lr(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Learning rate", "lr")
    drawn = False
    for i, run in enumerate(runs):
        for key in sorted(k for k in run.metrics if k == "train/lr" or k.startswith("lr-")):
            ax.plot(*run.metrics[key], color=_color(i, len(runs)), label=key)
            drawn = True
    return _finish(fig, ax, drawn, runs)


def plot_grad_norm(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Gradient norm (before clipping)", "‖g‖", log_y=True)
    drawn, thresholds, spiked = False, set(), False
    for i, run in enumerate(runs):
        s = run.series("stability/grad_norm")
        if s is None:
            continue
        drawn = True
        ax.plot(*s, color=_color(i, len(runs)), lw=1, label="grad_norm")
        thresholds.add(run.last("stability/clip_threshold"))  # logged by the stability telemetry when it clips
        spikes = run.series("stability/spike_step")
        for step in sorted({int(v) for v in spikes[1] if v >= 0}) if spikes is not None else []:
            ax.axvline(step, color=_color(i, len(runs)), ls=":", lw=1.5)
            ax.plot([step], [np.interp(step, *s)], "x", color="red", ms=9, mew=2)
            spiked = True
    for clip in sorted(t for t in thresholds if t):
        ax.axhline(clip, color="0.3", ls="--", lw=1)
    styles = {f"clip threshold {c}": dict(ls="--", lw=1) for c in sorted(t for t in thresholds if t)}
    if spiked:
        styles["spike"] = dict(ls="", marker="x", color="red", mew=2)
    return _finish(fig, ax, drawn, runs, styles)


def plot_update_ratio(runs: list[Run]) -> Figure | None:
    """The total ratio per run, and for a single run its parameter groups (dashed, dotted...) as well."""
    fig, ax = _figure("Update ratio ‖Δθ‖ / ‖θ‖", "ratio", log_y=True)
    drawn, styles = False, {}
    for i, run in enumerate(runs):
        keys = sorted(k for k in run.metrics if k.startswith("stability/update_ratio"))
        for j, key in enumerate(keys if len(runs) == 1 else keys[:1]):  # the total first, then the groups
            style = dict(lw=1.5 if j == 0 else 0.9, ls=["-", "--", ":", "-."][j % 4])
            ax.plot(*run.metrics[key], color=_color(i, len(runs)), **style)
            styles[key.removeprefix("stability/")] = style
            drawn = True
    return _finish(fig, ax, drawn, runs, styles)


def plot_throughput(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Throughput", "tokens/s")
    drawn = False
    for i, run in enumerate(runs):
        s = run.series("perf/tokens_per_s")
        if s is not None:
            ax.plot(*s, color=_color(i, len(runs)), marker=".", label="tokens/s")
            drawn = True
    return _finish(fig, ax, drawn, runs)


PLOTS = {
    "loss": plot_loss,
    "lr": plot_lr,
    "grad_norm": plot_grad_norm,
    "update_ratio": plot_update_ratio,
    "throughput": plot_throughput,
}


def searched_parameters(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) override keys that differ between the runs."""
    numeric, categorical = [], []
    for key in differing_overrides([run.overrides for run in runs]):
        values = [_override_value(run, key) for run in runs]
        (numeric if all(_override_number(v) is not None for v in values) else categorical).append(key)
    return numeric, categorical


def _override_value(run: Run, key: str) -> str | None:
    return next((o.partition("=")[2] for o in run.overrides if override_key(o) == key), None)


def _override_number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def plot_objective(runs: list[Run], metric: str, maximize: bool) -> dict[str, Figure]:
    """The objective against each numeric searched parameter; runs that differ in a categorical one
    (an optimizer) form one series each, best point starred."""
    numeric, categorical = searched_parameters(runs)
    figures = {}
    for key in numeric:
        groups: dict[str, list[tuple[float, float]]] = {}
        for run in runs:
            value = objective(run, metric)
            if value is not None and math.isfinite(value):
                group = " ".join(f"{k}={_override_value(run, k)}" for k in categorical)
                groups.setdefault(group, []).append((_override_number(_override_value(run, key)), value))
        if not groups:
            continue
        xs = [x for points in groups.values() for x, _ in points]
        fig, ax = _figure(f"{metric} against {key}", metric, xlabel=key)
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        connect = len(numeric) == 1  # with several searched numbers, neighbours in x differ in the others
        for i, (group, points) in enumerate(sorted(groups.items())):
            points.sort()
            best = (max if maximize else min)(points, key=lambda p: p[1])
            color = _color(i, len(groups))
            ax.plot([x for x, _ in points], [y for _, y in points], color=color, marker="o",
                    ls="-" if connect else "", label=group or metric)
            ax.plot(*best, marker="*", ms=14, color=color, mec="black")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        figures[f"objective_{key}"] = fig
    return figures
