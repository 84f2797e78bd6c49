"""The points a scaling law is fitted to: (N, D, loss) and the compute budget C each belongs to.

They come from a CSV file (columns ``params``, ``tokens``, ``loss``; ``flops`` may stand in for ``tokens``
as flops / (6 params), and when both are there ``flops`` names the budget of the point's IsoFLOP profile;
``non_embedding_params`` gives N when the fit counts non-embedding parameters), or from runs of
sweeps/scaling.yaml: a multirun directory (every finished job is a point) or one run directory. A run's
config.yaml records its point under ``callbacks.scaling`` (:class:`lmlab.callbacks.scaling.ScalingPoint`),
its loss is the validation loss logged at its last step (metrics.csv).

Bad input is one :class:`~lmlab.errors.InputError` line naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmlab.arguments import describe
from lmlab.errors import ArgumentError, InputError
from lmlab.scaling.params import ParamsKind

LOSS_METRIC = "val/loss"
PARAMS_COLUMN = {"total": "params", "non_embedding": "non_embedding_params"}


@dataclass
class Points:
    params: np.ndarray  # N, counted as params_kind says
    tokens: np.ndarray  # D
    loss: np.ndarray
    flops: np.ndarray  # the compute budget C of each point's IsoFLOP profile
    names: list[str]  # where each point comes from (a job directory, a CSV row)
    params_kind: ParamsKind
    source: str
    left_out: list[str] = field(default_factory=list)  # runs that are not points yet, and why

    def __len__(self) -> int:
        return len(self.loss)


def read_points(path: str | Path, params: ParamsKind = "total", only: list[str] | None = None) -> Points:
    """Points from a CSV file, a multirun directory of scaling runs, or one run directory; ``only``: globs of
    the job directory names to read (default: every job)."""
    # not @checked: lmlab.arguments would refuse a Path (not a config value) for `path`
    if params not in PARAMS_COLUMN:
        raise ArgumentError("params", params, f"must be {describe(ParamsKind)}")
    path = Path(path)
    if path.is_file():
        return read_csv(path, params)
    if path.is_dir():
        return read_runs(path, params, only)
    raise InputError(f"{path}: no such file or directory")


# ---- CSV ------------------------------------------------------------------------------------------


def read_csv(path: Path, params: ParamsKind = "total") -> Points:
    n_column = PARAMS_COLUMN[params]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h for h in reader.fieldnames or [] if h]
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a CSV file (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path}: not a CSV file ({e})") from None
    missing = [c for c in (n_column, "loss") if c not in header] + (
        ["tokens"] if "tokens" not in header and "flops" not in header else [])
    if missing:
        raise InputError(f"{path}: no column {', '.join(repr(m) for m in missing)} (the header has "
                         f"{', '.join(header) or 'nothing'}; needed: {n_column}, tokens or flops, loss)")
    if not rows:
        raise InputError(f"{path}: no rows (one row per run is needed)")
    columns = [n_column, "loss"] + [c for c in ("tokens", "flops") if c in header]
    values = {c: np.array([_positive(row.get(c), path, line, c) for line, row in enumerate(rows, start=2)])
              for c in columns}
    n = values[n_column]
    tokens = values["tokens"] if "tokens" in values else values["flops"] / (6 * n)
    flops = values["flops"] if "flops" in values else 6 * n * tokens
    return Points(n, tokens, values["loss"], flops, [f"row {line}" for line in range(2, len(rows) + 2)], params,
                  str(path))


def _positive(cell, path: Path, line: int, column: str) -> float:
    if isinstance(cell, list):  # more cells than the header has columns
        raise InputError(f"{path}: row {line} has more cells than the header has columns")
    if cell is None or cell.strip() == "":
        raise InputError(f"{path}: row {line}, column {column!r}: empty (every row needs a number)")
    try:
        value = float(cell)
    except ValueError:
        raise InputError(f"{path}: row {line}, column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{path}: row {line}, column {column!r}: {cell} must be a finite number > 0")
    return value


# ---- run directories ------------------------------------------------------------------------------


def read_runs(path: Path, params: ParamsKind = "total", only: list[str] | None = None) -> Points:
    """Every finished scaling run under ``path`` (itself a run, or a multirun directory of them)."""
    runs = [path] if (path / "config.yaml").is_file() else sorted(
        d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")  # .submitit, .hydra
        and (not only or any(fnmatch.fnmatchcase(d.name, g) for g in only)))
    points, unfinished = [], []
    for run in runs:
        reason = _unfinished(run)
        if reason:
            unfinished.append(f"{run.name} ({reason})")
            continue
        points.append(_run_point(run, params))
    if not points:
        found = "; ".join(unfinished[:5]) + (f"; ... ({len(unfinished)} in all)" if len(unfinished) > 5 else "")
        none = f" (no run directories in it{' matching ' + ' or '.join(only) if only else ''})"
        raise InputError(f"{path}: no finished run" + (f": {found}" if found else none))
    n, tokens, flops, loss, names = zip(*points, strict=True)
    return Points(np.array(n, dtype=float), np.array(tokens, dtype=float), np.array(loss), np.array(flops, dtype=float),
                  list(names), params, str(path), unfinished)


def join_points(parts: list[Points]) -> Points:
    """One set of the points of several sources (each counting N the same way)."""
    if len(parts) == 1:
        return parts[0]
    return Points(*(np.concatenate([getattr(p, key) for p in parts]) for key in ("params", "tokens", "loss", "flops")),
                  [name for p in parts for name in p.names], parts[0].params_kind, ", ".join(p.source for p in parts),
                  [name for p in parts for name in p.left_out])


def _unfinished(run: Path) -> str | None:
    """Why a run directory holds no point yet (None: it is finished). A multirun job says so in status.json;
    a single run is finished when its last validation is at its last step (checked in _run_point)."""
    if not (run / "config.yaml").is_file():
        return "no config.yaml"
    status_file = run / "status.json"
    if status_file.is_file():
        try:
            status = json.loads(status_file.read_text()).get("status")
        except json.JSONDecodeError:
            return "unreadable status.json"
        if status != "completed":
            return str(status)
    if not (run / "metrics.csv").is_file():
        return "no metrics.csv"
    return None


def _run_point(run: Path, params: ParamsKind) -> tuple:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_file = run / "config.yaml"
    try:
        config = OmegaConf.load(config_file)
        node = OmegaConf.select(config, "callbacks.scaling")
        max_steps = OmegaConf.select(config, "trainer.max_steps")
    except (OmegaConfBaseException, ValueError) as e:
        raise InputError(f"{config_file}: not a readable config ({str(e).splitlines()[0]})") from None
    if node is None:
        raise InputError(f"{config_file}: has no callbacks.scaling node (the N, D and C of a run of "
                         "sweeps/scaling.yaml); fit runs of that sweep, or a CSV with columns params, tokens, loss")
    point = {}
    for key in (PARAMS_COLUMN[params], "tokens", "flops"):  # the values the fit uses
        value = node.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{config_file}: callbacks.scaling.{key}={value!r}: must be a number > 0")
        point[key] = value
    step, loss = _last_validation(run / "metrics.csv")
    if isinstance(max_steps, int) and step < max_steps - 1:
        raise InputError(f"{run / 'metrics.csv'}: the last {LOSS_METRIC} is at step {step}, before the run's last "
                         f"step {max_steps - 1}: the run did not finish (resume it, or leave it out)")
    return point[PARAMS_COLUMN[params]], point["tokens"], point["flops"], loss, run.name


def _last_validation(path: Path) -> tuple[int, float]:
    """(step, value) of the last logged validation loss of a metrics.csv."""
    last = None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or LOSS_METRIC not in reader.fieldnames or "step" not in reader.fieldnames:
                raise InputError(f"{path}: no {LOSS_METRIC!r} column (the run logged no validation loss)")
            for line, row in enumerate(reader, start=2):
                cell = row.get(LOSS_METRIC)
                if cell in (None, ""):
                    continue
                step = _positive_or_zero(row.get("step"), path, line, "step")
                value = _positive(cell, path, line, LOSS_METRIC)
                if last is None or step >= last[0]:
                    last = (int(step), value)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: not a metrics file ({e})") from None
    if last is None:
        raise InputError(f"{path}: column {LOSS_METRIC!r} holds no value (the run never validated)")
    return last


def _positive_or_zero(cell, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except (TypeError, ValueError):
        raise InputError(f"{path}: row {line}, column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{path}: row {line}, column {column!r}: {cell} must be a number >= 0")
    return value
