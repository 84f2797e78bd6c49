"""Command-line entry points; the only code besides module.py that knows about Hydra."""

from pathlib import Path

# conf/ and sweeps/ sit at the repository root, next to train.py; lmlab is installed editable
REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = str(REPO_ROOT / "conf")

# the lmlab:// config source of sweeps/ and the ${lmlab.run_name:} resolvers of conf/logger/wandb.yaml
from lmlab.cli import run_names, sweep_source  # noqa: E402,F401
