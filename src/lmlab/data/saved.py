"""A finished run's data, rebuilt from the ``config.yaml`` the run recorded (resolved, plain data): its
held-out split and validation prompts, for tools that evaluate a checkpoint (``lmlab quantize``, benchmarks).
The token cache the run filled is found again by the same keys, so nothing is encoded twice."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from lmlab.errors import ArgumentError
from lmlab.targets import build


def run_config_file(ckpt: str | Path) -> Path | None:
    """The config.yaml of the run a checkpoint belongs to: beside it, or in the run directory above
    ``checkpoints/``; None when there is none."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def run_datamodule(ckpt: str | Path):
    """The run's own language-model DataModule, prepared and set up; None when the checkpoint has no run config
    beside it or its data is not blocks of tokens (pairs: no validation prompts)."""
    config = run_config_file(ckpt)
    if config is None:
        return None
    node = OmegaConf.to_container(OmegaConf.load(config), resolve=True).get("data")
    try:
        datamodule = build(node)
    except ArgumentError as e:
        raise e.within("data") from None
    if not hasattr(datamodule, "val_prompts"):
        return None
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule
