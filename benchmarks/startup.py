"""Start-up time: seconds from `python train.py` to the first optimizer step, and import times.

    python benchmarks/startup.py [--repeats 3] [--override key=value ...] [--smoke]

1. ``first_step``: `python train.py samples.num_prompts=0 <overrides>` (the default config otherwise:
   W&B offline, the default callbacks) in a fresh process; a probe callback writes the wall clock at
   setup, train start, the first batch and the end of the first optimizer step, then stops the run.
   One warm-up run first (tokenizer and token caches, the OS file cache), then ``--repeats`` timed runs.
2. ``imports``: `python -X importtime -c "import <module>"` for `lmlab` and for `lmlab.cli.train` (what
   train.py imports): total seconds and the slowest direct imports, as lmlab sees them.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from common import device_info, median, read_json, run_quietly, train_py, write_json

HEAVY = ("wandb", "matplotlib", "transformers", "datasets", "scipy", "pandas")  # load only when used


class FirstStepProbe(L.Callback):
    """Put into the child run by config: the wall clock at each mark, written to the run directory as
    ``startup_probe.json`` after the first step, which stops the run."""

    def __init__(self):
        self.times = {}

    def _mark(self, name):
        self.times.setdefault(name, time.time())

    def setup(self, trainer, pl_module, stage):
        self._mark("setup")

    def on_train_start(self, trainer, pl_module):
        self._mark("train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark("first_batch")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mark("first_step_done")
        write_json(trainer, "startup_probe", self.times)
        trainer.should_stop = True


def first_step(overrides: list[str], workdir: Path) -> dict:
    """One `python train.py` run: seconds from launch to each probe mark, and to the process' exit."""
    run_dir = workdir / "run"
    run = train_py(["samples.num_prompts=0", *overrides], run_dir, cwd=workdir,
                   callbacks={"startup_probe": {"_target_": "startup.FirstStepProbe"}})
    marks = read_json(run_dir, "startup_probe")
    return {**{name: round(t - run["started"], 3) for name, t in marks.items()}, "exit": round(run["seconds"], 3)}


def import_time(module: str) -> dict:
    """`python -X importtime -c "import <module>"`: total seconds and the slowest direct imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split(":", 1)[1].split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2  # 0: imported by the -c statement itself
            rows.append((name.strip(), int(cumulative), depth))
    # the last top-level import is `module` itself; it imports its dependencies first (depth 1 above it)
    last = max(i for i, (name, _, depth) in enumerate(rows) if depth == 0 and name == module)
    first = max((i for i, (_, _, depth) in enumerate(rows[:last]) if depth == 0), default=-1) + 1
    own = sorted(((us, name) for name, us, depth in rows[first:last] if depth == 1), reverse=True)
    heavy = {}
    for i, (name, us, depth) in enumerate(rows):
        if name in HEAVY:  # first import of the package: who pulled it in (children print before parents)
            chain = [name]
            for parent, _, parent_depth in rows[i + 1:]:
                if parent_depth < depth:
                    chain.append(parent)
                    depth = parent_depth
            shown = chain if len(chain) <= 6 else [*chain[:3], "...", *chain[-2:]]
            heavy[name] = dict(seconds=round(us / 1e6, 3), imported_via=" <- ".join(shown))
    return dict(module=module, seconds=round(rows[last][1] / 1e6, 3),
                slowest_direct_imports={name: round(us / 1e6, 3) for us, name in own[:8]},
                heavy_imports={name: heavy.get(name, "not imported") for name in HEAVY})


@run_quietly
def main(argv: list[str] | None, result: dict) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up run")
    parser.add_argument("--override", nargs="*", default=[], help="train.py overrides (default config otherwise)")
    parser.add_argument("--smoke", action="store_true",
                        help="one run, no warm-up, `import lmlab` only: checks that the benchmark runs")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="startup_") as tmp:
        for i in range(1 if args.smoke else args.repeats + 1):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            runs.append(first_step(args.override, workdir))
    timed = runs if args.smoke else runs[1:]
    summary = {mark: median([r[mark] for r in timed]) for mark in timed[0]}
    imports = [import_time(module) for module in (["lmlab"] if args.smoke else ["lmlab", "lmlab.cli.train"])]
    result.update(device_info(), benchmark="startup", overrides=args.override, warm=not args.smoke,
                  seconds_to_first_step=summary["first_step_done"], median_marks=summary,
                  runs=timed, warm_up_run=None if args.smoke else runs[0], imports=imports)


if __name__ == "__main__":
    main()
