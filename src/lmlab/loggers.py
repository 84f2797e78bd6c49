"""Loggers that never prompt or hang: W&B goes online only when a key is configured."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """auto: WANDB_MODE if set, else online with a key and offline without one."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}; allowed: {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if wandb_key_configured() else "offline")


def wandb_logger(save_dir: str, project: str = "lmlab", mode: str = "auto", **kwargs) -> WandbLogger:
    """A WandbLogger whose files live in the run directory (``<save_dir>/wandb``)."""
    os.makedirs(save_dir, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, mode=resolve_wandb_mode(mode), **kwargs)
