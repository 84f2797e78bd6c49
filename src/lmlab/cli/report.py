"""`lmlab report <run or multirun dir> [--out report.html]`: look at a run instead of reading it.

Reads `metrics.csv` of one run directory, or of every job directory (`0/`, `1/`, ...) of a Hydra
multirun, and writes one self-contained HTML page (PNG plots embedded as base64): loss and val
loss, learning rate, gradient norm with the clipping threshold and spike markers, update ratio
and throughput; for a sweep the runs are overlaid and ranked by the sweep's `optimized_metric`.
Works offline, from the files alone.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from lmlab.cli.user_errors import one_line_errors
from lmlab.errors import InputError

Series = tuple[np.ndarray, np.ndarray]  # steps, values
# settings that differ between jobs without being the experiment
_NOT_SETTINGS = ("paths.", "hydra.", "logger.", "task_name", "ckpt_path")


@dataclass
class Run:
    name: str
    path: Path
    metrics: dict[str, Series]
    config: dict = field(default_factory=dict)  # flattened: {"optimizer.lr": 0.01, ...}
    label: str = ""

    def series(self, key: str) -> Series | None:
        return self.metrics.get(key)

    def last(self, key: str) -> float | None:
        s = self.metrics.get(key)
        return float(s[1][-1]) if s is not None else None


def read_metrics_csv(path: Path) -> dict[str, Series]:
    """{column: (steps, values)} of a Lightning CSVLogger file: rows are sparse; non-finite values are
    dropped; a step written twice (a resumed run appends to the file) keeps its latest value.

    A file that is not such a table (not UTF-8, no `step` column, a value that is not a number, no rows
    with a step) raises an InputError naming the file and the first bad row."""
    columns: dict[str, dict[int, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "step" not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "nothing"
                raise InputError(f"{path}: not a metrics file (its header has no 'step' column; found {found})")
            for line, row in enumerate(reader, start=2):
                step = row.get("step")
                if step in (None, ""):
                    continue
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, ""):
                        continue
                    v = _number(value, path, line, key)
                    if math.isfinite(v):
                        columns.setdefault(key, {})[int(_number(step, path, line, "step"))] = v
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a metrics file (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path}: not a metrics file (malformed CSV: {e})") from None
    if not columns:
        raise InputError(f"{path}: has no logged values (the run logged nothing, or stopped before its first log)")
    return {
        key: (np.array(sorted(values)), np.array([values[s] for s in sorted(values)]))
        for key, values in columns.items()
    }


def _number(value: str | list, path: Path, line: int, key: str | None) -> float:
    if key is None or isinstance(value, list):  # more cells than the header has columns
        raise InputError(f"{path}: line {line} has more cells than the header has columns")
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{path}: line {line}, column {key!r}: {value!r} is not a number") from None


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: tree}


def _is_setting(key: str, runs: list[Run]) -> bool:
    """A config key whose value differs between runs for a reason other than the run's own directory."""
    if key.startswith(_NOT_SETTINGS):
        return False
    values = {
        repr(r.config.get(key)).replace(str(r.path.resolve()), "<run>").replace(str(r.path), "<run>")
        for r in runs
    }
    return len(values) > 1


def load_runs(path: Path) -> list[Run]:
    """One run directory, or the job directories of a multirun directory (numeric order)."""
    path = Path(path)
    if (path / "metrics.csv").is_file():
        dirs = [path]
    else:
        dirs = sorted(
            (d for d in path.iterdir() if (d / "metrics.csv").is_file()),
            key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
        )
    if not dirs:
        raise FileNotFoundError(
            f"{path}: neither a run directory with metrics.csv nor a multirun directory of them"
        )
    runs = []
    for d in dirs:
        try:
            metrics = read_metrics_csv(d / "metrics.csv")
        except InputError as e:
            if len(dirs) == 1:
                raise
            warnings.warn(f"report: skipping job {d.name}: {e}", stacklevel=2)
            continue
        config_file = d / "config.yaml"
        config = (
            _flatten(OmegaConf.to_container(OmegaConf.load(config_file))) if config_file.is_file() else {}
        )
        runs.append(Run(d.name, d, metrics, config))
    if not runs:
        raise InputError(f"{path}: no job has a readable metrics.csv (each was skipped, see the warnings)")
    differing = sorted(k for k in set().union(*(r.config for r in runs)) if _is_setting(k, runs))
    for run in runs:
        settings = " ".join(f"{k}={run.config.get(k)}" for k in differing)
        run.label = f"{run.name}: {settings}" if settings else run.name
    return runs


def sweep_objective(path: Path, runs: list[Run]) -> tuple[str, bool]:
    """(metric name, maximise?) from the jobs' `optimized_metric` and the sweeper's direction."""
    metric = next(
        (r.config["optimized_metric"] for r in runs if r.config.get("optimized_metric")), "val/loss"
    )
    direction = "minimize"
    if (Path(path) / "multirun.yaml").is_file():
        direction = OmegaConf.select(
            OmegaConf.load(Path(path) / "multirun.yaml"), "hydra.sweeper.direction", default="minimize"
        )
    return metric, str(direction).lower().startswith("max")


# ---- plots ----------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figure(title: str, ylabel: str, log_y: bool = False):
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if log_y:
        ax.set_yscale("log")
    return fig, ax


def _color(i: int) -> str:
    return f"C{i % 10}"


def plot_loss(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Loss", "cross-entropy (nats)")
    drawn = False
    for i, run in enumerate(runs):
        for key, style in (("train/loss", dict(lw=1, alpha=0.6)), ("val/loss", dict(lw=2, marker="o", ms=4))):
            s = run.series(key)
            if s is not None:
                ax.plot(*s, color=_color(i), label=f"{key} {run.label}" if len(runs) > 1 else key, **style)
                drawn = True
    return _finish(fig, ax, drawn)


def plot_lr(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Learning rate", "lr")
    drawn = False
    for i, run in enumerate(runs):
        for key in sorted(k for k in run.metrics if k == "train/lr" or k.startswith("lr-")):
            ax.plot(*run.metrics[key], color=_color(i), label=f"{key} {run.label}" if len(runs) > 1 else key)
            drawn = True
    return _finish(fig, ax, drawn)


def plot_grad_norm(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Gradient norm (before clipping)", "‖g‖", log_y=True)
    drawn = False
    for i, run in enumerate(runs):
        s = run.series("stability/grad_norm")
        if s is None:
            continue
        drawn = True
        ax.plot(*s, color=_color(i), lw=1, label=run.label if len(runs) > 1 else "grad_norm")
        clip = run.config.get("trainer.gradient_clip_val")
        if clip:
            ax.axhline(clip, color=_color(i), ls="--", lw=1, label=f"clip threshold {clip}")
        spikes = run.series("stability/spike_step")
        if spikes is not None:
            for step in sorted({int(v) for v in spikes[1] if v >= 0}):
                ax.axvline(step, color=_color(i), ls=":", lw=1.5)
                ax.plot([step], [np.interp(step, *s)], "x", color="red", ms=9, mew=2)
    return _finish(fig, ax, drawn)


def plot_update_ratio(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Update ratio ‖Δθ‖ / ‖θ‖", "ratio", log_y=True)
    drawn = False
    for i, run in enumerate(runs):
        keys = sorted(k for k in run.metrics if k.startswith("stability/update_ratio"))
        for j, key in enumerate(keys):  # the total first, then one line style per group
            ls = ["-", "--", ":", "-."][j % 4]
            name = key.removeprefix("stability/")
            style = dict(lw=1.5 if j == 0 else 0.9, ls=ls)
            ax.plot(
                *run.metrics[key],
                color=_color(i),
                label=f"{name} {run.label}" if len(runs) > 1 else name,
                **style,
            )
            drawn = True
    return _finish(fig, ax, drawn)


def plot_throughput(runs: list[Run]) -> Figure | None:
    fig, ax = _figure("Throughput", "tokens/s")
    drawn = False
    for i, run in enumerate(runs):
        s = run.series("perf/tokens_per_s")
        if s is not None:
            mfu = run.last("perf/mfu")
            suffix = f" (MFU {mfu:.1%})" if mfu is not None else ""
            ax.plot(
                *s, color=_color(i), marker=".", label=(run.label if len(runs) > 1 else "tokens/s") + suffix
            )
            drawn = True
    return _finish(fig, ax, drawn)


def _finish(fig: Figure, ax, drawn: bool) -> Figure | None:
    if not drawn:
        return None
    ax.legend(fontsize=7, loc="best")
    return fig


PLOTS = {
    "loss": plot_loss,
    "lr": plot_lr,
    "grad_norm": plot_grad_norm,
    "update_ratio": plot_update_ratio,
    "throughput": plot_throughput,
}


# ---- table and page -------------------------------------------------------------------------


def summary_rows(runs: list[Run], metric: str, maximize: bool) -> list[dict]:
    """One row per run, best first by the final value of `metric` (runs without it last)."""
    rows = []
    for run in runs:
        s = run.series(metric)
        tps = run.series("perf/tokens_per_s")
        rows.append(
            {
                "run": run.name,
                "settings": run.label.partition(": ")[2],
                f"{metric} (final)": float(s[1][-1]) if s is not None else None,
                f"{metric} (best)": float(s[1].max() if maximize else s[1].min()) if s is not None else None,
                "steps": int(max(v[0][-1] for v in run.metrics.values())) + 1 if run.metrics else 0,
                "tokens/s": float(np.median(tps[1])) if tps is not None else None,
                "MFU": run.last("perf/mfu"),
                "loss spikes": run.last("stability/loss_spikes"),
                "non-finite steps": run.last("stability/nonfinite_steps"),
            }
        )
    key = f"{metric} (final)"
    rows.sort(key=lambda r: (r[key] is None, -(r[key] or 0) if maximize else (r[key] or 0)))
    return rows


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "MFU":
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_html(path: Path, runs: list[Run]) -> str:
    metric, maximize = sweep_objective(path, runs)
    rows = summary_rows(runs, metric, maximize)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ["rank", *rows[0]])
    body = "".join(
        "<tr>" + f"<td>{i + 1}</td>" + "".join(f"<td>{_cell(k, v)}</td>" for k, v in row.items()) + "</tr>"
        for i, row in enumerate(rows)
    )
    figures = []
    for name, plot in PLOTS.items():
        fig = plot(runs)
        if fig is not None:
            figures.append(
                f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{_png(fig)}"></figure>'
            )
    info = ""
    if len(runs) == 1 and (runs[0].path / "run.json").is_file():
        run_json = json.loads((runs[0].path / "run.json").read_text())
        info = (
            "<p class=info>"
            + " · ".join(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}" for k, v in run_json.items())
            + "</p>"
        )
    kind = (
        "sweep of {} runs, ranked by {} ({})".format(len(runs), metric, "max" if maximize else "min")
        if len(runs) > 1
        else "single run"
    )
    title = html.escape(str(Path(path).resolve()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lmlab report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:nth-child(3) {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
.info {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>lmlab report</h1><p>{title}: {html.escape(kind)}</p>{info}
<table id="runs"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
{"".join(figures)}
</body></html>
"""


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"report: {path} is not a directory")
    out = Path(out) if out is not None else path / "report.html"
    out.write_text(render_html(path, load_runs(path)), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="lmlab report", description=__doc__.split("\n\n")[1])
    parser.add_argument("path", help="a run directory (with metrics.csv) or a multirun directory")
    parser.add_argument("--out", help="HTML file to write (default: <path>/report.html)")
    args = parser.parse_args(argv)
    try:
        with one_line_errors():
            out = write_report(args.path, args.out)
    except FileNotFoundError as e:
        parser.error(str(e))
    print(f"report written to {out}")
    return out
