"""generate.py loads a run without its config or data and decodes with every strategy."""

import random
import shutil
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from torch.nn.modules.module import register_module_forward_hook

from lmlab.checkpoint import load_checkpoint
from lmlab.cli import CONF_DIR
from lmlab.cli.generate import generate, quote_prompt
from lmlab.models import GPT

ROOT = CONF_DIR.rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def ckpt(trained_run, tmp_path_factory):
    """A trained run's best checkpoint, alone in a folder of its own (no config, no data, no tokenizer)."""
    alone = tmp_path_factory.mktemp("alone") / "model.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", alone)
    return alone


def test_generate_py_every_strategy_from_a_lone_checkpoint(ckpt, tmp_path):
    prompt = "def main(x='${HOME}'):"  # as the shell passes it: quotes and ${...} are text, not Hydra syntax
    cmd = [sys.executable, f"{ROOT}/generate.py", f"ckpt={ckpt}", "decoding=suite", f"prompt={prompt}",
           "max_new_tokens=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    strategies = ("greedy", "sample", "beam", "prompt_lookup")
    for strategy in strategies:
        assert strategy in proc.stdout
    assert proc.stdout.count(prompt) >= len(strategies) and "tokens_per_s" in proc.stdout
    assert not list(tmp_path.glob("outputs")), "generate.py must not litter the working directory"


def test_prompt_file_is_decoded_as_one_left_padded_batch(ckpt, tmp_path, generate_cfg):
    lines = ["import os", "def loads(s):", "class JSONDecoder(object):"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{lines[0]}\n\n{lines[1]}\n{lines[2]}\n")
    forwards = []  # (input ids, attention mask) of every cached forward of lmlab's GPT

    def record(module, args, kwargs, output):
        if isinstance(module, GPT) and kwargs.get("cache") is not None:
            forwards.append((args[0], kwargs["attention_mask"]))

    hook = register_module_forward_hook(record, with_kwargs=True)
    try:
        (result,) = generate(generate_cfg(f"ckpt={ckpt}", f"prompt_file={prompts}", "decoding=beam",
                                          "decoding.num_beams=2", "max_new_tokens=5"))
    finally:
        hook.remove()
    tokenizer = load_checkpoint(ckpt)[1]
    assert result.name == "beam" and [tokenizer.decode(p) for p in result.prompts] == lines
    assert len(result.completions) == 3 and all(len(c) <= 5 for c in result.completions)
    # one batch: the prefill holds every prompt, aligned right; each step after it one token per prompt and beam
    lengths = [len(p) for p in result.prompts]
    (prefill_ids, prefill_mask), *steps = forwards
    assert prefill_ids.shape == (3, max(lengths)) and len(set(lengths)) == 3
    for ids, mask, prompt in zip(prefill_ids.tolist(), prefill_mask.tolist(), result.prompts, strict=True):
        assert mask == [0] * (max(lengths) - len(prompt)) + [1] * len(prompt) and ids[-len(prompt):] == prompt
    assert len(steps) <= 4 and all(ids.shape == (3 * 2, 1) for ids, _ in steps)  # 3 decodes: 15 forwards


@pytest.mark.parametrize("text", ["it's ${HOME} (", '"""Return the', "'a' + b", '"x"', "print('a\\n')", "end\\",
                                  "\\${x}", "${oc.env:HOME}", "null", "[1, 2]", "a=b"])
def test_prompt_text_reaches_the_config_verbatim(text, generate_cfg):
    assert generate_cfg("ckpt=x", f"prompt={text}").prompt == text


def test_prompt_quoting_round_trips_any_text():
    """Seeded random strings of the characters Hydra and OmegaConf give a meaning: quotes, backslashes, ${}."""
    parser, rng = OverridesParser.create(), random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("'\"\\${}a :=") for _ in range(rng.randint(1, 10)))
        value = parser.parse_override(quote_prompt(f"prompt={text}")).value()
        assert OmegaConf.create({"prompt": value}).prompt == text


def test_shell_prompt_with_quotes_and_braces_is_taken_verbatim(ckpt, generate_cfg):
    typed = "it's ${HOME} ("
    (result,) = generate(generate_cfg(f"ckpt={ckpt}", f"prompt={typed}", "decoding=greedy", "max_new_tokens=2"))
    tokenizer = load_checkpoint(ckpt)[1]
    assert tokenizer.decode(result.prompts[0]) == typed and result.prompts[0] == tokenizer.encode(typed)
    assert len(result.completions[0]) == 2


@pytest.mark.parametrize("overrides,error", [
    (["ckpt=/nonexistent/run", "prompt=x"], "ckpt=/nonexistent/run: does not exist"),
    (["ckpt=x", "prompt=x", "prompt_file=y"], "exactly one of prompt"),
    (["ckpt=x"], "exactly one of prompt"),
    (["ckpt=x", "prompt_file=/nonexistent.txt"], "prompt_file=/nonexistent.txt: does not exist"),
])
def test_bad_input_is_named(overrides, error, generate_cfg):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        generate(generate_cfg(*overrides))
