"""Runs as a report reads them: a run directory's metrics.csv, config.yaml, run.json and status.json, or the
job directories of a multirun, labelled by the overrides that tell them apart."""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from lmlab.errors import InputError
from lmlab.report.labels import differing_overrides, override_key, short_override

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
    differing = differing_overrides([run.overrides for run in runs])
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


def objective(run: Run, metric: str) -> float | None:
    """What the job returned to the sweeper (status.json), else the metric's last logged value."""
    value = run.status.get("metric")
    if value is not None and run.status.get("status") == "completed":
        return float(value)
    return run.last(metric)
