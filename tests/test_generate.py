"""generate.py loads a run without its config or data and decodes with every strategy."""

import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from lmlab.cli import CONF_DIR
from lmlab.cli.generate import generate, quote_prompt

ROOT = CONF_DIR.rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def ckpt(trained_run, tmp_path_factory):
    """A trained run's best checkpoint, alone in a folder of its own (no config, no data, no tokenizer)."""
    alone = tmp_path_factory.mktemp("alone") / "model.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", alone)
    return alone


def generate_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("generate", overrides=[quote_prompt(o) for o in overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_generate_py_every_strategy_from_a_lone_checkpoint(ckpt, tmp_path):
    cmd = [sys.executable, f"{ROOT}/generate.py", f"ckpt={ckpt}", "decoding=suite", "prompt=def main(",
           "max_new_tokens=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for strategy in ("greedy", "sample", "beam", "prompt_lookup"):
        assert strategy in proc.stdout
    assert "def main(" in proc.stdout and "tokens_per_s" in proc.stdout
    assert not list(tmp_path.glob("outputs")), "generate.py must not litter the working directory"


def test_prompt_file_is_decoded_as_one_left_padded_batch(ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("import os\n\ndef loads(s):\nclass JSONDecoder(object):\n")
    (result,) = generate(generate_cfg(f"ckpt={ckpt}", f"prompt_file={prompts}", "decoding=beam",
                                      "decoding.num_beams=2", "max_new_tokens=5"))
    assert result.name == "beam" and len(result.completions) == 3
    assert all(len(c) <= 5 for c in result.completions)


def test_shell_prompt_with_quotes_and_braces_is_taken_verbatim(ckpt):
    (result,) = generate(generate_cfg(f"ckpt={ckpt}", "prompt=it's ${HOME} (", "decoding=greedy",
                                      "max_new_tokens=2"))
    assert result.prompts[0] and len(result.completions[0]) == 2


@pytest.mark.parametrize("overrides,error", [
    (["ckpt=/nonexistent/run", "prompt=x"], "ckpt=/nonexistent/run does not exist"),
    (["ckpt=x", "prompt=x", "prompt_file=y"], "exactly one of prompt"),
    (["ckpt=x"], "exactly one of prompt"),
    (["ckpt=x", "prompt_file=/nonexistent.txt"], "prompt_file=/nonexistent.txt: does not exist"),
])
def test_bad_input_is_named(overrides, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        generate(generate_cfg(*overrides))
