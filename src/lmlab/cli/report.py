"""`lmlab report <run or multirun dir> [--out report.html]`: look at a run instead of reading it.

Reads `metrics.csv` of one run directory, or of every job directory (`0/`, `1/`, ...) of a Hydra
multirun, and writes one self-contained HTML page (PNG plots embedded as base64): loss and val
loss, learning rate, gradient norm with the clipping threshold and spike markers, update ratio
and throughput; for a sweep the runs are overlaid, labelled by the overrides that tell them apart
(as typed: `optimizer=lion sched=wsd`), ranked by the sweep's `optimized_metric`, and the objective
is plotted against each numeric searched parameter (Optuna trials, LR grids). Works offline, from
the files alone.
"""

from __future__ import annotations

import argparse
import base64
import csv
import fnmatch
import html
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import OmegaConf

from lmlab.cli.multirun import override_key, short_override
from lmlab.cli.user_errors import one_line_errors
from lmlab.errors import InputError

Series = tuple[np.ndarray, np.ndarray]  # steps, values


@dataclass
class Run:
    name: str
    path: Path
    metrics: dict[str, Series]
    config: dict = field(default_factory=dict)  # flattened: {"optimizer.lr": 0.01, ...}
    overrides: list[str] = field(default_factory=list)  # as typed: ["optimizer=lion", "optimizer.lr=0.001"]
    status: dict = field(default_factory=dict)  # a multirun job's status.json
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was started with: run.json, else Hydra's .hydra/overrides.yaml."""
    overrides = _read_json(run_dir / "run.json").get("overrides")
    if overrides is None and (run_dir / ".hydra" / "overrides.yaml").is_file():
        overrides = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    return [str(o) for o in overrides or []]


def differing_overrides(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (a key some runs lack counts)."""
    keys = []
    for run in runs:
        keys += [override_key(o) for o in run.overrides if override_key(o) not in keys]
    values = lambda key: {next((o for o in r.overrides if override_key(o) == key), None) for r in runs}
    return [key for key in keys if len(values(key)) > 1]


def job_dirs(path: Path, only: list[str] | None = None) -> list[Path]:
    """The job directories of a multirun directory (numeric order); with `only`, those whose name
    matches one of its globs."""
    return sorted(
        (d for d in path.iterdir() if d.is_dir() and (not only or any(fnmatch.fnmatchcase(d.name, g) for g in only))),
        key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
    )


def load_runs(path: Path, only: list[str] | None = None) -> list[Run]:
    """One run directory, or the job directories of a multirun directory (`only`: globs of their names)."""
    path = Path(path)
    if (path / "metrics.csv").is_file():
        dirs = [path]
    else:
        dirs = [d for d in job_dirs(path, only) if (d / "metrics.csv").is_file()]
    if not dirs:
        raise FileNotFoundError(
            f"{path}: neither a run directory with metrics.csv nor a multirun directory of them"
            + (f" (of the jobs matching {' or '.join(only)})" if only else "")
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
        runs.append(Run(d.name, d, metrics, config, run_overrides(d), _read_json(d / "status.json")))
    if not runs:
        raise InputError(f"{path}: no job has a readable metrics.csv (each was skipped, see the warnings)")
    differing = differing_overrides(runs)
    for run in runs:
        shown = [short_override(o) for o in run.overrides if override_key(o) in differing]
        run.label = " ".join(shown) if shown else run.name
    return runs


def jobs_without_metrics(path: Path, only: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, status.json) of a multirun's jobs that failed before logging anything."""
    path = Path(path)
    if (path / "metrics.csv").is_file():
        return []
    return [(d.name, _read_json(d / "status.json")) for d in job_dirs(path, only)
            if (d / "status.json").is_file() and not (d / "metrics.csv").is_file()]


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


def _png(fig: Figure) -> bytes:
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
        thresholds.add(run.config.get("trainer.gradient_clip_val") or None)
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


def objective(run: Run, metric: str) -> float | None:
    """What the job returned to the sweeper (status.json), else the metric's last logged value."""
    value = run.status.get("metric")
    if value is not None and run.status.get("status") == "completed":
        return float(value)
    return run.last(metric)


def searched_parameters(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) override keys that differ between the runs."""
    numeric, categorical = [], []
    for key in differing_overrides(runs):
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
                "settings": run.label if run.label != run.name else "",
                "status": _status_text(run.status),
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


def failed_rows(path: Path, runs: list[Run], template: dict, only: list[str] | None = None) -> list[dict]:
    """Table rows for jobs that failed before logging a metric, labelled like the others."""
    failed = jobs_without_metrics(path, only)
    swept = differing_overrides([*runs, *(Run(n, path, {}, overrides=s.get("overrides", [])) for n, s in failed)])
    rows = []
    for name, status in failed:
        shown = [short_override(o) for o in status.get("overrides", []) if override_key(o) in swept]
        rows.append({key: None for key in template} | {"run": name, "settings": " ".join(shown),
                                                       "status": _status_text(status)})
    return rows


def _status_text(status: dict) -> str | None:
    if not status:
        return None
    return f"failed: {status.get('error')}" if status.get("status") == "failed" else status.get("status")


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "MFU":
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def figures(path: Path, runs: list[Run]) -> dict[str, bytes]:
    """{plot name: PNG}: the overlaid curves, and for a sweep the objective against each searched parameter."""
    metric, maximize = sweep_objective(path, runs)
    plots = {name: plot(runs) for name, plot in PLOTS.items()}
    if len(runs) > 1:
        plots |= plot_objective(runs, metric, maximize)
    return {name: _png(fig) for name, fig in plots.items() if fig is not None}


def render_html(path: Path, runs: list[Run], pngs: dict[str, bytes], only: list[str] | None = None) -> str:
    metric, maximize = sweep_objective(path, runs)
    rows = summary_rows(runs, metric, maximize)
    rows += failed_rows(path, runs, rows[0], only)
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ["rank", *rows[0]])
    body = "".join(
        "<tr>" + f"<td>{i + 1}</td>" + "".join(f"<td>{_cell(k, v)}</td>" for k, v in row.items()) + "</tr>"
        for i, row in enumerate(rows)
    )
    images = [
        f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        "</figure>"
        for name, png in pngs.items()
    ]
    info = ""
    if len(runs) == 1 and (runs[0].path / "run.json").is_file():
        run_json = json.loads((runs[0].path / "run.json").read_text())
        info = (
            "<p class=info>"
            + " · ".join(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}" for k, v in run_json.items())
            + "</p>"
        )
    failed = len(rows) - len(runs)
    kind = (
        "sweep of {} runs{}, ranked by {} ({})".format(
            len(runs), f" and {failed} failed before logging" if failed else "", metric, "max" if maximize else "min")
        if len(rows) > 1
        else "single run"
    )
    title = html.escape(str(Path(path).resolve()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lmlab report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:nth-child(3), td:nth-child(4) {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
.info {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>lmlab report</h1><p>{title}: {html.escape(kind)}</p>{info}
<table id="runs"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
{"".join(images)}
</body></html>
"""


def write_report(path: str | Path, out: str | Path | None = None, png_dir: str | Path | None = None,
                 only: list[str] | None = None) -> Path:
    """The HTML page (default <path>/report.html); with `png_dir`, each plot also as <png_dir>/<plot>.png;
    `only`: globs of the job directory names to include (default: every job)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"report: {path} is not a directory")
    out = Path(out) if out is not None else path / "report.html"
    runs = load_runs(path, only)
    pngs = figures(path, runs)
    out.write_text(render_html(path, runs, pngs, only), encoding="utf-8")
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for name, png in pngs.items():
            (Path(png_dir) / f"{name}.png").write_bytes(png)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="lmlab report", description=__doc__.split("\n\n")[1])
    parser.add_argument("path", help="a run directory (with metrics.csv) or a multirun directory")
    parser.add_argument("--out", help="HTML file to write (default: <path>/report.html)")
    parser.add_argument("--png-dir", help="also write each plot as <png-dir>/<plot>.png (e.g. for a README)")
    parser.add_argument("--only", metavar="GLOB", action="append",
                        help="only the jobs whose directory name matches the glob, e.g. 'optimizer.lr=*' (repeatable)")
    args = parser.parse_args(argv)
    try:
        with one_line_errors():
            out = write_report(args.path, args.out, args.png_dir, args.only)
    except FileNotFoundError as e:
        parser.error(str(e))
    print(f"report written to {out}")
    return out
