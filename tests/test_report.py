"""`lmlab report` on real runs, the end-of-run summary table and the W&B offline record."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
import yaml
from helpers import finished_wandb_records, read_metrics
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from tiny_lightning import TinyLM, fit_tiny

from lmlab import report
from lmlab.callbacks.dashboard import WandbDashboard
from lmlab.callbacks.stability import StabilityMonitor
from lmlab.callbacks.summary import RunSummary
from lmlab.callbacks.throughput import ThroughputMonitor
from lmlab.cli import report as report_cli
from lmlab.report import plots

PLOTS = {"loss", "lr", "grad_norm", "update_ratio", "throughput"}


def telemetry(per_layer: str = "scalars"):
    return [
        StabilityMonitor(per_layer=per_layer),
        ThroughputMonitor(peak_flops=1e10, decode_tokens=0),
        LearningRateMonitor(),
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-job multirun directory as Hydra and lmlab's train CLI lay it out, from real runs: each job's
    overrides in run.json (job 1 only in Hydra's .hydra/overrides.yaml), its resolved config, its status."""
    root = tmp_path_factory.mktemp("multirun")
    for job, (lr, wd) in enumerate(((3e-3, 0.1), (3e-2, 0.0))):
        run_dir = root / str(job)
        fit_tiny(
            run_dir,
            telemetry(),
            steps=12,
            module=TinyLM(lr=lr),
            val=True,
            val_check_interval=4,
            log_every_n_steps=2,
            gradient_clip_val=0.5,
        )
        config = {
            "optimized_metric": "val/loss",
            "optimizer": {"_target_": "lmlab.optim.AdamW", "lr": lr, "weight_decay": wd},
            "sched": {"min_lr_ratio": 0.1 * (job + 1)},  # resolved differences that were not typed
            "trainer": {"gradient_clip_val": 0.5},
            "paths": {"output_dir": str(run_dir)},
        }
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        overrides = ["optimizer=adamw", f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}", "trainer.max_steps=12"]
        if job == 0:
            (run_dir / "run.json").write_text(json.dumps({"overrides": overrides}))
        else:
            (run_dir / ".hydra").mkdir()
            (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        final = read_metrics(run_dir)["val/loss"]
        (run_dir / "status.json").write_text(json.dumps({"status": "completed", "metric": final[max(final)]}))
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"direction": "minimize"}}}))
    return root


def images(page: str) -> dict[str, bytes]:
    return {
        alt: base64.b64decode(data)
        for alt, data in re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    }


def test_report_of_a_sweep_overlays_runs_and_ranks_them(sweep, tmp_path, capsys):
    out = report_cli.main([str(sweep), "--out", str(tmp_path / "sweep.html"), "--png-dir", str(tmp_path / "png")])
    assert out == tmp_path / "sweep.html" and "report written" in capsys.readouterr().out
    page = out.read_text()
    pngs = images(page)
    assert set(pngs) == PLOTS | {"objective_optimizer.lr", "objective_optimizer.weight_decay"}
    assert {name: (tmp_path / "png" / f"{name}.png").read_bytes() for name in pngs} == pngs  # the same plots
    for png in pngs.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    final = {job: read_metrics(sweep / job)["val/loss"] for job in ("0", "1")}
    final = {job: v[max(v)] for job, v in final.items()}
    ranked = sorted(final, key=final.get)
    assert [r[1] for r in rows] == ranked  # both runs, best val/loss first
    # labelled by the overrides that differ, as typed; not by resolved config differences (sched)
    assert {r[2] for r in rows} == {"optimizer.lr=0.003 optimizer.weight_decay=0.1",
                                    "optimizer.lr=0.03 optimizer.weight_decay=0"}
    assert {r[3] for r in rows} == {"completed"}
    assert float(rows[0][4]) == pytest.approx(final[ranked[0]], rel=1e-3)
    assert "ranked by val/loss (min)" in page


def test_report_of_the_jobs_a_glob_selects(sweep, tmp_path):
    page = report.write_report(sweep, tmp_path / "one.html", only=["1"]).read_text()
    assert "single run" in page and "optimizer.lr=0.03" not in page  # one job: no label to tell apart
    assert [r.name for r in report.load_runs(sweep, only=["2", "[01]"])] == ["0", "1"]
    with pytest.raises(FileNotFoundError, match=r"of the jobs matching lr=\* or 2\)"):
        report.load_runs(sweep, only=["lr=*", "2"])


def test_sweep_legends_sit_outside_the_curves(sweep):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    runs = report.load_runs(sweep)
    for name, plot in plots.PLOTS.items():
        fig = plot(runs)
        FigureCanvasAgg(fig).draw()
        ax = fig.axes[0]
        legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= axes_box.x1, name  # right of the axes, covering no curve
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {r.label for r in runs} <= set(labels), name  # one entry per run


def test_objective_against_each_searched_parameter(sweep):
    runs = report.load_runs(sweep)
    assert plots.searched_parameters(runs) == (["optimizer.lr", "optimizer.weight_decay"], [])
    figures = plots.plot_objective(runs, "val/loss", maximize=False)
    ax = figures["objective_optimizer.lr"].axes[0]
    points = sorted(zip(*ax.lines[0].get_data(), strict=True))
    expected = sorted((float(r.overrides[1].split("=")[1]), r.status["metric"]) for r in runs)
    assert [x for x, _ in points] == pytest.approx([x for x, _ in expected])
    assert [y for _, y in points] == pytest.approx([y for _, y in expected])
    assert ax.get_xscale() == "log"  # 3e-3 .. 3e-2 spans a decade
    assert ax.lines[0].get_linestyle() == "None"  # two parameters searched at once: points, no lines


def test_report_of_one_run_defaults_next_to_it(sweep):
    out = report_cli.main([str(sweep / "1")])
    assert out == sweep / "1" / "report.html"
    assert set(images(out.read_text())) == PLOTS


def test_metrics_csv_reading_keeps_latest_value_of_a_resumed_step(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,5.0,\n0,1,4.0,\n0,1,,4.5\n0,1,3.5,\n0,2,nan,\n0,3,inf,4.2\n"
    )
    m = report.read_metrics_csv(tmp_path / "metrics.csv")
    assert m["train/loss"][0].tolist() == [0, 1] and m["train/loss"][1].tolist() == [5.0, 3.5]
    assert m["val/loss"][0].tolist() == [1, 3] and m["val/loss"][1].tolist() == [4.5, 4.2]
    assert "epoch" not in m


def test_report_needs_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report_cli.main([str(tmp_path)])
    assert "neither a run directory with metrics.csv nor a multirun directory" in capsys.readouterr().err


def test_report_marks_spikes_on_the_grad_norm_plot(tmp_path):
    monitor = StabilityMonitor(spike_window=8, spike_warmup=4)
    fit_tiny(tmp_path, [monitor], steps=10, module=TinyLM(inject={7: "spike"}))
    runs = report.load_runs(tmp_path)
    assert set(runs[0].series("stability/spike_step")[1]) >= {7.0}
    fig = plots.plot_grad_norm(runs)
    markers = [line for line in fig.axes[0].lines if line.get_marker() == "x"]
    assert [m.get_xdata()[0] for m in markers] == [7]


def test_run_summary_table(tmp_path):
    console = Console(file=io.StringIO(), width=100)
    summary = RunSummary(console=console)
    fit_tiny(tmp_path, [*telemetry(), summary], steps=8, val=True, val_check_interval=4, log_every_n_steps=2)
    val = read_metrics(tmp_path)["val/loss"]
    s = summary.summary
    assert s["best_val_loss"] == pytest.approx(min(val.values()), rel=1e-6)
    assert s["val_loss"] == pytest.approx(val[max(val)], rel=1e-6)
    assert (s["steps"], s["tokens"], s["loss_spikes"], s["nonfinite_steps"]) == (8, 8 * 8 * 16, 0, 0)
    assert s["tokens_per_s"] > 0 and 0 < s["mfu"]
    text = console.file.getvalue()
    for label in ("val loss (best)", "val perplexity", "tokens/s", "MFU", "loss spikes", "non-finite steps"):
        assert label in text


def test_wandb_offline_run_records_the_namespaces(tmp_path, monkeypatch):
    import wandb

    from lmlab.loggers import wandb_logger as wandb_logger_for

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    wandb_logger = wandb_logger_for(save_dir=str(tmp_path), project="lmlab-test", mode="offline")
    try:
        fit_tiny(
            tmp_path,
            [*telemetry("histogram"), WandbDashboard()],
            steps=4,
            log_every_n_steps=2,
            logger=[CSVLogger(tmp_path, name="", version=""), wandb_logger],
        )
    finally:
        wandb.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    keys, metrics = set(), {}
    for record in finished_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys |= {"/".join(item.nested_key) or item.key for item in record.history.item}
        elif kind == "metric":
            metrics[record.metric.name or record.metric.glob_name] = record.metric
    for namespace in ("stability/", "perf/", "cost/"):
        assert any(k.startswith(namespace) for k in keys), namespace
    assert {
        "stability/grad_norm/per_layer/_type",
        "stability/param_norm/per_layer/_type",
    } <= keys  # histograms
    assert metrics["stability/*"].step_metric == "trainer/global_step"
    assert metrics["val/loss"].summary.min and metrics["stability/loss_spikes"].summary.max


def test_report_labels_are_plain_text_even_with_dollar_signs(tmp_path):
    """Overrides as typed label the curves: `$a_b_c$` in a value is text (matplotlib would parse it as math and
    fail: "Double subscript"), and the report is written."""
    import subprocess
    import sys

    for job, paths in (("0", "$HOME/a$b"), ("1", "$a_b_c$")):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.csv").write_text(f"step,train/loss\n1,5.0\n2,4.{job}\n")
        (tmp_path / job / "run.json").write_text(json.dumps({"overrides": [f"data.corpus.paths={paths}"]}))
    cmd = [sys.executable, "-c", "import sys; from lmlab.cli.main import main; main(sys.argv[1:])", "report",
           str(tmp_path), "--png-dir", str(tmp_path / "png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert "data.corpus.paths=$a_b_c$" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "png" / "loss.png").stat().st_size > 0
