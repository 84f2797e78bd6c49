"""Command-line entry points; the only code besides module.py that knows about Hydra."""

import sys
from pathlib import Path

# conf/ sits at the repository root, next to train.py and src/: the `lmlab` command finds it from the
# source tree, so it works from an editable install of a checkout (`pip install -e .`), not from a wheel
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def require_conf_dir() -> None:
    """Exit with the fix when lmlab is installed without the checkout its configs live in."""
    if not Path(CONF_DIR, "train.yaml").is_file():
        print(f"lmlab: no configs at {CONF_DIR}: the lmlab command reads the conf/ folder of the checkout it "
              "was installed from, so install it editable from a checkout of the lmlab repository: "
              "cd <checkout> && pip install -e .", file=sys.stderr)
        raise SystemExit(2)
