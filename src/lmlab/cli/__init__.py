"""Command-line entry points: parse, call the library, print. The only code that knows Hydra."""

import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.errors import ArgumentError, InputError

# conf/ and sweeps/ sit at the repository root, next to train.py and src/: the `lmlab` command finds them
# from the source tree, so it works from an editable install of a checkout (`pip install -e .`), not a wheel
REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = str(REPO_ROOT / "conf")


def require_conf_dir() -> None:
    """Exit with the fix when lmlab is installed without the checkout its configs live in."""
    if not Path(CONF_DIR, "train.yaml").is_file():
        print(f"lmlab: no configs at {CONF_DIR}: the lmlab command reads the conf/ folder of the checkout it "
              "was installed from, so install it editable from a checkout of the lmlab repository: "
              "cd <checkout> && pip install -e .", file=sys.stderr)
        raise SystemExit(2)


def compose(config_name: str, overrides: list[str], run_dir: str | Path | None = None) -> DictConfig:
    """The config ``python <config_name>.py <overrides>`` runs, composed outside a Hydra app (``lmlab cost``,
    the tests); with ``run_dir``, Hydra's own node too, set as the current HydraConfig with that run directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=run_dir is not None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
            if "paths" in cfg:
                cfg.paths.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
    return cfg


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved, without Hydra's own node; an unset ``???``
    value raises MissingMandatoryValue (shown as one line by the entry points)."""
    return {key: OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            if OmegaConf.is_config(value) else value
            for key, value in ((k, cfg[k]) for k in cfg if k != "hydra")}


def build(node: Any, **kwargs) -> Any:
    """Hydra's instantiate, with plain lists and dicts as arguments (what the checks saw and constructors
    expect); a user's mistake in a constructor is raised as itself (not wrapped in an InstantiationException),
    an argument error named under the node's full key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ArgumentError):
            key = re.search(r"full_key: (\S+)", str(e))
            raise (e.__cause__.within(key.group(1)) if key else e.__cause__) from None
        if isinstance(e.__cause__, InputError):
            raise e.__cause__ from None
        raise


# the lmlab:// config source of sweeps/, the ${lmlab.run_name:} resolvers of conf/logger/wandb.yaml and the
# ${lmlab.scaling.*:} resolvers of sweeps/scaling.yaml
from lmlab.cli import run_names, scaling_resolvers, sweep_source  # noqa: E402,F401
