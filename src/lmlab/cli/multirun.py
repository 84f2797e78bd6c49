"""Multiruns that survive their failures and can be run again.

Hydra's basic sweeper runs every job and then re-raises the first failure alone; the Optuna sweeper
stops at the first failed batch. Instead, every job of a multirun goes through `run_sweep_job`:

- its outcome goes to `<run dir>/status.json` (running, completed with the returned metric, or
  failed with the error line); the traceback goes to the job's log file (`<run dir>/train.log`);
- a failed job returns the worst value for the sweep's direction (+inf when minimising), so the
  sweeper records it and goes on (Optuna: a trial with the worst value);
- running the same sweep command into the same sweep directory returns the stored metric of jobs
  that completed before, without training, and resumes the others from their last checkpoint
  (`ckpt_path=auto`);
- `MultirunSummary`, a Hydra callback (conf/hydra/default.yaml), first checks every job's config
  (lmlab.cli.sweep_check: a value no job could run with stops the sweep before the first job), writes
  `<sweep dir>/sweep.json`
  (the sweep's name and the keys it varies, which name the W&B runs), and at the end prints one
  line per failed job and exits with status 1 when any failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.atomic import atomic_write_text
from lmlab.errors import InputError, first_line
from lmlab.report.labels import job_label

log = logging.getLogger("lmlab")
STATUS_FILE = "status.json"
SWEEP_FILE = "sweep.json"
LAUNCH_ENV = "LMLAB_MULTIRUN_LAUNCH"  # set by MultirunSummary; jobs (in-process or launched) inherit it


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all (a job killed mid-write leaves the previous file), by rank 0 alone
    (a multi-node job runs this function once per rank)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        atomic_write_text(path, json.dumps(data, indent=2))


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def worst_value(hydra_cfg: DictConfig) -> float:
    """What a failed job returns: the end of the scale the sweeper moves away from."""
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default="minimize")
    if not isinstance(direction, str):  # multi-objective lists are not supported by lmlab's sweeps
        direction = "minimize"
    return -math.inf if direction.lower().startswith("max") else math.inf


def run_sweep_job(cfg: DictConfig, train: Callable[[DictConfig], float | None]) -> float | None:
    """`train(cfg)` as one job of a multirun: recorded, skipped when done, resumed, never raising."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(cfg.paths.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    config_sha = hashlib.sha1(OmegaConf.to_yaml(cfg).encode()).hexdigest()[:16]  # before ckpt_path=auto
    job = {"job": hydra_cfg.job.num, "overrides": overrides, "config_sha": config_sha,
           "launch": os.environ.get(LAUNCH_ENV)}
    label = job_label(overrides, sweep_info(hydra_cfg.sweep.dir).get("swept"))
    previous = read_status(run_dir)
    if previous is not None and previous.get("overrides") != overrides:
        raise InputError(
            f"hydra.sweep.dir: job {job['job']} ({run_dir}) holds a run of other overrides "
            f"({' '.join(previous.get('overrides') or [])}); run a different sweep in a new directory"
        )
    if previous is not None and previous.get("config_sha") != config_sha:
        raise InputError(
            f"hydra.sweep.dir: job {job['job']} ({run_dir}) was run with the same overrides but another config "
            "(a config file changed since); run the sweep in a new directory"
        )
    if previous is not None and previous.get("status") == "completed":
        log.info("job %s (%s) completed before: skipped, %s=%s", job["job"], label,
                 cfg.optimized_metric, previous.get("metric"))
        write_json(run_dir / STATUS_FILE, previous | {"skipped": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                      "launch": job["launch"]})
        return previous.get("metric")
    if cfg.get("ckpt_path") is None:  # an interrupted job continues from its last checkpoint
        with open_dict(cfg):
            cfg.ckpt_path = "auto"
    write_json(run_dir / STATUS_FILE, job | {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        metric = train(cfg)
    except Exception as error:  # noqa: BLE001  (any failure of one job must not cost the others)
        log.error("job %s (%s) failed", job["job"], label, exc_info=error)
        write_json(run_dir / STATUS_FILE, job | {"status": "failed", "error": first_line(error),
                                                 "log": str(run_dir / f"{hydra_cfg.job.name}.log")})
        return worst_value(hydra_cfg)
    write_json(run_dir / STATUS_FILE, job | {"status": "completed", "metric": metric,
                                             "metric_name": cfg.optimized_metric})
    return metric


def swept_keys(config: DictConfig) -> list[str]:
    """Config keys a multirun varies: sweep overrides on the command line and the sweeper's params."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    candidates = [f"{key}={value}" for key, value in params.items()]
    candidates += list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(candidates)
    keys = []
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return keys


def sweep_info(sweep_dir: str | Path) -> dict:
    """What MultirunSummary wrote at the start of the multirun in `sweep_dir` ({} if nothing)."""
    try:
        return json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class MultirunSummary(Callback):
    """Names the sweep for its jobs at the start, reports its failed jobs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from lmlab.cli.sweep_check import check_jobs
        from lmlab.cli.user_errors import stop

        try:  # a job no run could start with stops the sweep here, before anything is written
            check_jobs(config)
        except InputError as e:
            stop(e)  # Hydra turns a callback's exception into a warning and goes on
        # which status files are this command's: another command may run into the same directory at once
        self.launch = os.environ[LAUNCH_ENV] = f"{os.getpid()}-{time.time_ns()}"
        sweep_dir = Path(config.hydra.sweep.dir)
        name = OmegaConf.select(config, "hydra.runtime.choices.sweep") or config.get("task_name") or "sweep"
        write_json(sweep_dir / SWEEP_FILE, {
            "group": f"{name}-{sweep_dir.name}",
            "swept": swept_keys(config),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        })

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        swept = sweep_info(sweep_dir).get("swept")
        statuses = []
        for file in sweep_dir.glob(f"**/{STATUS_FILE}"):
            status = json.loads(file.read_text())
            if status.get("launch") == self.launch:
                statuses.append((file.parent, status))
        statuses.sort(key=lambda item: item[1].get("job", 0))
        failed = [(d, s) for d, s in statuses if s.get("status") == "failed"]
        skipped = sum(1 for _, s in statuses if s.get("status") == "completed" and "skipped" in s)
        done = sum(1 for _, s in statuses if s.get("status") == "completed")
        log.info("multirun %s: %d jobs, %d completed (%d of them before, skipped), %d failed",
                 sweep_dir, len(statuses), done, skipped, len(failed))
        if not failed:
            return
        lines = [f"{len(failed)} of {len(statuses)} jobs failed (sweep {sweep_dir}):"]
        lines += [f"  job {s.get('job')} ({job_label(s.get('overrides', []), swept)}): {s.get('error')} "
                  f"(log: {s.get('log')})" for _, s in failed]
        print("\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(1)
