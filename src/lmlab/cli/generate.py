"""`python generate.py ckpt=<run> decoding=<strategy> prompt="..."`: decode from a checkpoint alone.

The checkpoint carries the model's config and the tokenizer, so neither the training config nor
its data is needed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmlab.checkpoint import load_checkpoint
from lmlab.cli import CONF_DIR
from lmlab.cli.display import print_results
from lmlab.decoding.evaluate import DecodeResult, evaluate_strategy, named_strategies
from lmlab.devices import resolve_device


def read_prompts(cfg: DictConfig) -> list[str]:
    if (cfg.prompt is None) == (cfg.prompt_file is None):
        raise ValueError("give exactly one of prompt=\"...\" or prompt_file=<file with one prompt per line>")
    if cfg.prompt is not None:
        prompts = [str(cfg.prompt)]
    else:
        path = Path(cfg.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt_file={path} does not exist")
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts or not all(prompts):
        raise ValueError("prompt is empty: give at least one character to continue from")
    return prompts


def generate(cfg: DictConfig) -> list[DecodeResult]:
    prompts = read_prompts(cfg)
    model, tokenizer, _ = load_checkpoint(cfg.ckpt)
    model.to(resolve_device(cfg.device))
    return decode_and_print(cfg, model, tokenizer, [tokenizer.encode(p) for p in prompts], cfg.max_new_tokens)


def decode_and_print(cfg: DictConfig, model, tokenizer, prompts: list[list[int]],
                     max_new_tokens: int) -> list[DecodeResult]:
    """Every strategy of the `decoding=` choice on the prompts, printed; shared with train.py's samples."""
    strategies = named_strategies(instantiate(cfg.decoding), HydraConfig.get().runtime.choices.decoding)
    results = [evaluate_strategy(name, decode, model, prompts, max_new_tokens, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id, cfg.seed)
               for name, decode in strategies.items()]
    print_results(results, tokenizer)
    return results


def quote_prompt(arg: str) -> str:
    """`prompt=<text>` as the shell passes it becomes a Hydra string literal, so the text is taken verbatim:
    quotes (leading ones too, as in a docstring), backslashes and `${...}` included."""
    if not arg.startswith("prompt="):
        return arg
    text = arg[len("prompt="):]
    # Hydra reads a backslash as an escape only before a quote, before `${` or at the end of the string
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda run: run.group(1) * 2, text)
    text = text.replace("'", "\\'").replace("${", "\\${")
    return f"prompt='{text}'"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def _main(cfg: DictConfig) -> None:
    generate(cfg)


def main() -> None:
    sys.argv = [quote_prompt(arg) for arg in sys.argv]
    _main()
