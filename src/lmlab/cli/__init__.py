"""Command-line entry points; the only code besides module.py that knows about Hydra."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# conf/ sits at the repository root, next to train.py (DESIGN.md); lmlab is installed editable
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved, without Hydra's own node; an unset ``???``
    value raises MissingMandatoryValue (shown as one line by the entry points)."""
    return {key: OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
            if OmegaConf.is_config(value) else value
            for key, value in ((k, cfg[k]) for k in cfg if k != "hydra")}
