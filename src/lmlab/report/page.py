"""The report page: a table of the runs ranked by the sweep's objective, failed jobs listed, and every plot
embedded, in one self-contained HTML file (and, optionally, each plot as a PNG)."""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import numpy as np

from lmlab.errors import InputError, first_line
from lmlab.report.labels import differing_overrides, override_key, short_override
from lmlab.report.plots import PLOTS, plot_objective, png
from lmlab.report.runs import Run, jobs_without_metrics, load_runs, sweep_objective


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
    swept = differing_overrides([*(run.overrides for run in runs), *(s.get("overrides", []) for _, s in failed)])
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
    from matplotlib import rc_context

    metric, maximize = sweep_objective(path, runs)
    with rc_context({"text.parse_math": False}):  # labels are overrides as typed: `$` is text, never mathtext
        plots = {name: plot(runs) for name, plot in PLOTS.items()}
        if len(runs) > 1:
            plots |= plot_objective(runs, metric, maximize)
        plots |= scaling_plots(path, runs)
        return {name: png(fig) for name, fig in plots.items() if fig is not None}


def scaling_plots(path: Path, runs: list[Run]) -> dict:
    """A scaling sweep's (sweeps/scaling.yaml: its jobs record callbacks.scaling) IsoFLOP profiles, compute-optimal
    frontier and fit residuals, as `lmlab scaling fit --png-dir` draws them; none while it has too few points."""
    if len(runs) < 2 or not any("callbacks.scaling.flops" in run.config for run in runs):
        return {}
    from lmlab.scaling.plots import figures as scaling_figures
    from lmlab.scaling.points import read_points

    try:
        points = read_points(path, only=[run.name for run in runs])
        return {f"scaling_{name}": fig for name, fig in scaling_figures(points).items()}
    except InputError as e:  # fewer points than a fit needs: the page still shows the runs
        warnings.warn(f"report: no scaling plots ({first_line(e)})", stacklevel=2)
        return {}


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
    if len(runs) == 1 and (runs[0].path / "data_audit.json").is_file():
        from lmlab.data.audit import summary_line

        audit = json.loads((runs[0].path / "data_audit.json").read_text())
        info += f'<p class=info id="data-audit">{html.escape(summary_line(audit))}</p>'
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
