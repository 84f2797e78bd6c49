"""Reports of runs and sweeps from the files a run leaves (metrics.csv, config.yaml, run.json, status.json):
read them (runs.py), plot them (plots.py), write one HTML page (page.py). `lmlab report` is the command."""

from lmlab.report.runs import Run, load_runs, read_metrics_csv

__all__ = ["write_report", "load_runs", "read_metrics_csv", "Run"]


def __getattr__(name: str):
    """``write_report`` on first use: it draws with matplotlib, which `python train.py` (it names sweep jobs with
    lmlab.report.labels) does not load."""
    if name == "write_report":
        from lmlab.report.page import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
