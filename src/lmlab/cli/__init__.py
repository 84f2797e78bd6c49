"""Command-line entry points; the only code besides module.py that knows about Hydra."""

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved, without Hydra's own node; an unset ``???``
    value raises MissingMandatoryValue (shown as one line by the entry points)."""
    return {key: OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            if OmegaConf.is_config(value) else value
            for key, value in ((k, cfg[k]) for k in cfg if k != "hydra")}


# the lmlab:// config source of sweeps/, the ${lmlab.run_name:} resolvers of conf/logger/wandb.yaml and the
# ${lmlab.scaling.*:} resolvers of sweeps/scaling.yaml
from lmlab.cli import run_names, scaling_resolvers, sweep_source  # noqa: E402,F401
