"""`lmlab report <run or multirun dir> [--out report.html]`: look at a run instead of reading it.

Reads `metrics.csv` of one run directory, or of every job directory (`0/`, `1/`, ...) of a Hydra
multirun, and writes one self-contained HTML page (PNG plots embedded as base64): loss and val
loss, learning rate, gradient norm with the clipping threshold and spike markers, update ratio
and throughput; for a sweep the runs are overlaid, labelled by the overrides that tell them apart
(as typed: `optimizer=lion sched=wsd`), ranked by the sweep's `optimized_metric`, and the objective
is plotted against each numeric searched parameter (Optuna trials, LR grids). Works offline, from
the files alone (lmlab.report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.user_errors import check_writable, one_line_errors, writing
from lmlab.report import write_report


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
            check_writable("--out", args.out)
            check_writable("--png-dir", args.png_dir, folder=True)
            with writing("--out", args.out), writing("--png-dir", args.png_dir):
                out = write_report(args.path, args.out, args.png_dir, args.only)
    except FileNotFoundError as e:
        parser.error(str(e))
    print(f"report written to {out}")
    return out
