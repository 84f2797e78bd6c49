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
from omegaconf import DictConfig

from lmlab.checkpoint import load_checkpoint
from lmlab.cli import CONF_DIR, resolved
from lmlab.cli.display import decode_and_print
from lmlab.cli.user_errors import hydra_task, run_hydra_app
from lmlab.config import check_generate_config
from lmlab.decoding.evaluate import DecodeResult
from lmlab.devices import resolve_device
from lmlab.errors import ArgumentError, InputError
from lmlab.quantization import QuantizationSettings, quantize
from lmlab.quantization.checkpoint import SAFETENSORS
from lmlab.quantization.convert import QUANTIZE_NAMES, quantization_of


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
    settings = quantization_of(cfg.get("quantize"), cfg.get("quantize_group_size"))
    if settings is not None and str(cfg.ckpt).endswith(SAFETENSORS):
        raise InputError(f"ckpt={cfg.ckpt} is a quantized checkpoint already; drop quantize={settings.mode} "
                         "(or give the float run directory or .ckpt)")
    return settings


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
        try:
            model = quantize(model, settings)
        except ArgumentError as e:
            raise e.renamed(QUANTIZE_NAMES) from None
    model.to(resolve_device(cfg.device))
    encoded = [tokenizer.encode(p) for p in prompts]
    check_context(model, encoded, cfg.max_new_tokens)
    return decode_and_print(cfg.decoding, HydraConfig.get().runtime.choices.decoding, model, tokenizer, encoded,
                            cfg.max_new_tokens, cfg.seed)


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
