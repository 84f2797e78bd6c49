"""Readable W&B names, groups and tags from what the user typed, as OmegaConf resolvers that
conf/logger/wandb.yaml uses: `${lmlab.run_name:}`, `${lmlab.run_group:}`, `${lmlab.run_tags:}`.

A job of a multirun is named by the overrides its sweep varies (`optimizer=lion sched=wsd`), or by
its directory when the sweep names them (hydra.sweep.subdir), and all jobs of one multirun share a
group (the sweep's name and directory, e.g. `optimizers-2026-12-02_14-22-16`); a single run is named
by its overrides, or by its directory when it has none. The overrides are the tags.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lmlab.cli.multirun import in_multirun, sweep_info
from lmlab.report.labels import distinguishing

MAX_NAME = 128


def shown_overrides() -> list[str]:
    """The overrides that tell this run apart: in a multirun the swept ones, else all of them."""
    if not HydraConfig.initialized():
        return []
    overrides = list(HydraConfig.get().overrides.task)
    swept = sweep_info(HydraConfig.get().sweep.dir).get("swept") if in_multirun() else None
    return distinguishing(overrides, swept)


def run_name() -> str | None:
    """A sweep that names its job directories (hydra.sweep.subdir, e.g. `adamw_lr0.001`) names its runs
    the same way: its commands may share one directory, each varying other keys."""
    if not HydraConfig.initialized():
        return None
    directory = Path(HydraConfig.get().runtime.output_dir).name
    if in_multirun() and not directory.isdigit():
        return directory[:MAX_NAME]
    return (" ".join(shown_overrides()) or directory)[:MAX_NAME]


def run_group() -> str | None:
    if not in_multirun():
        return None
    sweep_dir = HydraConfig.get().sweep.dir
    return sweep_info(sweep_dir).get("group") or f"{HydraConfig.get().job.name}-{Path(sweep_dir).name}"


def run_tags() -> list[str]:
    return shown_overrides()


for _name, _resolver in (("run_name", run_name), ("run_group", run_group), ("run_tags", run_tags)):
    OmegaConf.register_new_resolver(f"lmlab.{_name}", _resolver, replace=True)
