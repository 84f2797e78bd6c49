"""Command-line entry points; the only code besides module.py that knows about Hydra."""

from pathlib import Path

# conf/ sits at the repository root, next to train.py (DESIGN.md); lmlab is installed editable
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
