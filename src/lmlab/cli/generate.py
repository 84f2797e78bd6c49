"""`python generate.py ckpt=<run> decoding=<strategy> prompt="..."`: decode from a checkpoint alone.

The checkpoint carries the model's config and the tokenizer, so neither the training config nor
its data is needed. `quantize=int8|int4` decodes with weight-only quantized weights; `ckpt=` may
also be a quantized `.safetensors` file written by `lmlab quantize`.
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
from lmlab.cli import CONF_DIR, resolved
from lmlab.cli.display import print_results
from lmlab.cli.user_errors import hydra_task, run_hydra_app
from lmlab.config import check_generate_config
from lmlab.decoding.evaluate import DecodeResult, compiles, evaluate_strategy, named_strategies
from lmlab.devices import resolve_device
from lmlab.errors import InputError
from lmlab.quantization import QuantizationSettings, quantization_settings, quantize


def read_prompts(cfg: DictConfig) -> list[str]:
    """The prompt, or the non-empty lines of prompt_file (the config check made sure exactly one is given)."""
    if cfg.prompt is not None:
        return [str(cfg.prompt)]
    path = Path(cfg.prompt_file).expanduser()
    try:
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"prompt_file={cfg.prompt_file}: is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not prompts:
        raise InputError(f"prompt_file={cfg.prompt_file}: has no non-empty line; give one prompt per line")
    return prompts


def quantization(cfg: DictConfig) -> QuantizationSettings | None:
    """`quantize=int8|int4` (and `quantize_group_size=` for int4), checked before anything is loaded."""
    mode, group_size = cfg.get("quantize"), cfg.get("quantize_group_size")
    if mode is None:
        if group_size is not None:
            raise InputError(f"quantize_group_size={group_size} is set but quantize is null; "
                             "add quantize=int4 (group sizes apply to int4)")
        return None
    if str(cfg.ckpt).endswith(".safetensors"):
        raise InputError(f"ckpt={cfg.ckpt} is a quantized checkpoint already; drop quantize={mode} "
                         "(or give the float run directory or .ckpt)")
    return quantization_settings(mode, group_size, names={"mode": "quantize", "group_size": "quantize_group_size"})


def check_context(model, prompts: list[list[int]], max_new_tokens: int, key: str = "max_new_tokens") -> None:
    """The longest prompt plus the new tokens must fit the model's context (named before decoding starts)."""
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.max_seq_len:
        raise InputError(f"{key}={max_new_tokens}: the longest prompt ({longest} tokens) + {key} must be at most "
                         f"the model's context ({model.max_seq_len} tokens)")


def generate(cfg: DictConfig) -> list[DecodeResult]:
    check_generate_config(resolved(cfg))
    prompts = read_prompts(cfg)
    settings = quantization(cfg)
    model, tokenizer, _ = load_checkpoint(cfg.ckpt)
    if settings is not None:
        model = quantize(model, settings)
    model.to(resolve_device(cfg.device))
    encoded = [tokenizer.encode(p) for p in prompts]
    check_context(model, encoded, cfg.max_new_tokens)
    return decode_and_print(cfg, model, tokenizer, encoded, cfg.max_new_tokens)


def decode_and_print(cfg: DictConfig, model, tokenizer, prompts: list[list[int]],
                     max_new_tokens: int) -> list[DecodeResult]:
    """Every strategy of the `decoding=` choice on the prompts, printed; shared with train.py's samples."""
    strategies = named_strategies(instantiate(cfg.decoding), HydraConfig.get().runtime.choices.decoding)
    results = [evaluate_strategy(name, decode, model, prompts, max_new_tokens, tokenizer.eos_token_id,
                                 tokenizer.pad_token_id, cfg.seed, warmup=compiles(decode))
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
@hydra_task
def _main(cfg: DictConfig) -> None:
    generate(cfg)


def main() -> None:
    sys.argv = [quote_prompt(arg) for arg in sys.argv]
    run_hydra_app(_main)
