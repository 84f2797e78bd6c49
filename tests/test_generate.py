"""generate.py loads a run without its config or data and decodes with every strategy."""

import subprocess
import sys

import pytest

from lmlab.cli.generate import quote_prompt
from lmlab.cli.train import train
from tests_paths import ROOT


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus_dir, cache_dir):
    return None


def test_quote_prompt_keeps_shell_text_verbatim():
    assert quote_prompt("prompt=def main(") == "prompt='def main('"
    assert quote_prompt("prompt=it's ${x}") == "prompt='it\\\\'s \\\\${x}'"
    assert quote_prompt("decoding=beam") == "decoding=beam"
