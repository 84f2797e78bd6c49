"""`lmlab data audit [data overrides] [--json FILE]`: duplicates, contamination and quality of a corpus.

Composes the same `data` group as `python train.py <overrides>` (conf/train.yaml with the overrides, e.g.
`data=text_files data.corpus.paths=[notes/]`), checks it as training does, prepares the tokenizer and the
packed tokens if they are not cached (the split depends on token counts), and prints the audit stored with
them (lmlab.data.audit): a table, one summary line, and with --json the whole audit as JSON.
"""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf
from rich.console import Console

from lmlab.atomic import atomic_write_text
from lmlab.cli import build, compose
from lmlab.cli.user_errors import check_writable, one_line_errors, writing
from lmlab.errors import InputError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmlab data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser("audit", help="duplicates, train/validation contamination and quality of the data",
                                description=__doc__.split("\n\n")[1])
    audit.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (data=text_files ...)")
    audit.add_argument("--json", metavar="FILE", help="write the whole audit to FILE as JSON")
    return parser.parse_args(argv)


def audit_config(overrides: list[str]) -> dict:
    """The audit of the data config that `train.py <overrides>` would train on."""
    from lmlab.config import check_group
    from lmlab.data import LMDataModule

    cfg = compose("train", overrides)
    check_group("data", OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True), "data")
    datamodule = build(cfg.data)
    if not isinstance(datamodule, LMDataModule):
        raise InputError(f"data._target_={cfg.data._target_}: the audit describes the language-model split of "
                         "lmlab.data.LMDataModule (data=stdlib_code, text_files or hf_dataset)")
    datamodule.corpus.check()  # unusable files first: an audit of a binary corpus names them
    datamodule.check_inputs()
    return datamodule.audit()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from lmlab.data.audit import summary_line, summary_table

    with one_line_errors():
        check_writable("--json", args.json)  # before the data is prepared
        report = audit_config(args.overrides)
        if args.json:
            with writing("--json", args.json):
                atomic_write_text(args.json, json.dumps(report, indent=1))
    Console().print(summary_table(report))
    print(summary_line(report))
    return report
