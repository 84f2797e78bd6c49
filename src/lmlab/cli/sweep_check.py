"""Every job of a multirun checked before the first one starts, so a value no job could run with
(`optimizer.lr=1e-3,-1`, an Optuna search space with inverted bounds, `hydra.sweeper.n_trials=0`) ends the
command in one line before anything is trained or written, not after the valid jobs have trained.

The basic sweeper knows its jobs up front: each job's config is composed as its launcher composes it and
checked as train.py checks it (the config alone: nothing is built). Optuna draws its trials as it goes: its
options are checked, each search space is built as the Optuna sweeper builds it, and the config at each end
of every searched range (each choice; the low and high end of an interval or range) is checked, one
parameter at a time. Other sweepers' jobs are checked as they start, as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lmlab.arguments import PositiveInt, Probability, checked
from lmlab.cli.user_errors import user_error_message
from lmlab.errors import ArgumentError, InputError

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
GRID_SAMPLER = "optuna.samplers.GridSampler"


@checked
def basic_sweeper(max_batch_size: PositiveInt | None = None, params: dict | None = None) -> None:
    """What lmlab needs of Hydra's basic sweeper options (it asserts these only once it sweeps)."""


@checked
def optuna_sweeper(n_trials: PositiveInt = 20, n_jobs: PositiveInt = 2, max_failure_rate: Probability = 0.0,
                   direction: Literal["minimize", "maximize"] = "minimize") -> None:
    """What lmlab needs of the Optuna sweeper's options: a trial at least, one at a time at least, and one
    objective (a job returns one metric, lmlab.cli.multirun)."""


def check_jobs(config: DictConfig) -> None:
    """Each job of the multirun ``config`` describes, checked as train.py checks it; an InputError naming the
    job by its swept overrides (an Optuna search space by itself) and the first problem."""
    sweeper = config.hydra.sweeper
    target = sweeper.get("_target_")
    if target == BASIC:
        check_sweeper_options(basic_sweeper, sweeper)
        jobs = basic_jobs(config)
    elif target == OPTUNA:
        check_sweeper_options(optuna_sweeper, sweeper)
        jobs = optuna_jobs(config)
    else:
        return
    for num, (name, overrides) in enumerate(jobs):
        check_job(config, overrides, num, name)


def check_sweeper_options(narrowed, sweeper: DictConfig) -> None:
    from lmlab.arguments import check_arguments, parameters

    def plain(value):  # the Optuna sweeper's structured config holds its direction as an Enum
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else getattr(value, "name", value)

    values = {name: plain(value) for name, value in sweeper.items() if name in parameters(narrowed)}
    try:
        check_arguments(narrowed, values)
    except ArgumentError as e:
        raise e.within("hydra.sweeper") from None


def sweep_overrides(config: DictConfig) -> list[Override]:
    """The sweeper's params and the command line's overrides, parsed as the sweepers parse them."""
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return parser.parse_overrides([*params, *config.hydra.overrides.task])


def basic_jobs(config: DictConfig) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every job, in the basic sweeper's order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from lmlab.cli.multirun import swept_keys
    from lmlab.report.labels import job_label

    (jobs,) = BasicSweeper.split_arguments(sweep_overrides(config), None)
    swept = swept_keys(config)
    return [(f"job {num} ({job_label(overrides, swept) or 'no swept overrides'})", overrides)
            for num, overrides in enumerate(jobs)]


def optuna_jobs(config: DictConfig) -> list[tuple[str, list[str]]]:
    """(name, overrides) of the fixed overrides alone, then with each end of each search space (Optuna draws
    the values in between as it goes)."""
    from optuna.distributions import CategoricalDistribution

    parsed = sweep_overrides(config)
    fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in parsed if not o.is_sweep_override()]
    grid = OmegaConf.select(config, "hydra.sweeper.sampler._target_") == GRID_SAMPLER
    ends = []  # (override, the ends of its search space)
    for override in (o for o in parsed if o.is_sweep_override()):
        distribution = search_space(override)
        if grid and not (isinstance(distribution, CategoricalDistribution) or override.is_range_sweep()):
            raise InputError(f"{override.input_line}: the grid sampler (hydra/sweeper/sampler=grid) searches only "
                             "choice(...) and range(...) values; use another sampler for an interval")
        ends.append((override, search_ends(distribution)))
    # a searched key the config lacks (+key=...) is set in every trial: the checks see it at its first end
    added = {o.get_key_element(): values[0] for o, values in ends if o.get_key_element().startswith("+")}
    jobs = [("every trial", [*fixed, *(f"{k}={v}" for k, v in added.items())])]
    for override, values in ends:
        key = override.get_key_element()
        others = [f"{k}={v}" for k, v in added.items() if k != key]
        jobs += [(f"{override.input_line}, at {key}={value}", [*fixed, *others, f"{key}={value}"]) for value in values]
    return jobs


def search_space(override: Override):
    """The Optuna distribution the sweeper builds from ``override``, or its refusal as one line."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    try:
        return create_optuna_distribution_from_override(override)
    except (ValueError, AssertionError, NotImplementedError) as e:
        rule = str(e).strip().replace("`", "") or "not a search space the Optuna sweeper takes"
        raise InputError(f"{override.input_line}: {rule}") from None


def search_ends(distribution) -> list:
    """The values a job may get from ``distribution`` that the config checks judge best: every choice, or
    both ends of a range."""
    choices = getattr(distribution, "choices", None)
    return list(choices) if choices is not None else [distribution.low, distribution.high]


def check_job(master: DictConfig, overrides: list[str], num: int, name: str) -> None:
    """One job's config composed as its launcher composes it, checked as train.py checks it."""
    try:
        with job_config(master, overrides, num) as cfg:
            check_train_job(cfg)
    except Exception as e:
        message = user_error_message(e, composing=True)
        if message is None:
            raise
        raise InputError(f"{name}: {message}; no job was started") from None


def check_train_job(cfg: DictConfig) -> None:
    """What train.py checks of its config before it builds anything."""
    from lmlab.cli import resolved
    from lmlab.config import check_train_config
    from lmlab.config.rules import accumulation

    check_train_config(resolved(cfg), multirun=True)
    accumulation(cfg.data, cfg.trainer)


@contextmanager
def job_config(master: DictConfig, overrides: list[str], num: int) -> Iterator[DictConfig]:
    """The config of job ``num`` as its launcher composes it, the current HydraConfig while inside (as when the
    job runs: ``${hydra:...}`` and the job's directory resolve)."""
    cfg = GlobalHydra.instance().config_loader().load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = num
    try:
        HydraConfig.instance().set_config(cfg)
        subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), str(subdir)))
        HydraConfig.instance().set_config(cfg)
        yield cfg
    finally:
        HydraConfig.instance().set_config(master)
