"""`lmlab <command> [args]`: train, generate, report, cost, quantize, mup, export, eval, data, scaling."""

import importlib
import sys

from lmlab.cli import require_conf_dir

COMMANDS = {
    "train": "train a model (same as python train.py)",
    "generate": "decode from a checkpoint (same as python generate.py)",
    "report": "HTML report of a run or sweep from its metrics.csv",
    "cost": "FLOPs, device-hours and money for a config, from measured throughput",
    "quantize": "int8/int4 weight-only checkpoint of a run, with a before/after table",
    "mup": "μP coordinate check: activations against width, standard vs mup (mup coord-check ...)",
    "export": "a run as a Hugging Face folder (transformers, vLLM, TGI, lm-eval load it)",
    "eval": "lm-evaluation-harness on an exported run; perplexity next to lmlab's own",
    "data": "data audit: duplicates, train/validation contamination, quality (lmlab data audit [overrides])",
    "scaling": "fit scaling laws to a sweep (lmlab scaling fit) and plan a compute-optimal run",
}
NO_CONF = ("report", "export", "scaling")  # commands that read no config from conf/


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
        print(f"usage: lmlab <command> [args]\n\ncommands:\n{lines}")
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command not in NO_CONF:  # the others compose configs from conf/
        require_conf_dir()
    module = importlib.import_module(f"lmlab.cli.{command}")
    if command in ("train", "generate"):  # Hydra apps read sys.argv
        sys.argv = [f"lmlab {command}", *rest]
        module.main()
    else:
        module.main(rest)
