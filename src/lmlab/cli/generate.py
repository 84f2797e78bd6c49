"""`python generate.py ckpt=<run> decoding=<strategy> prompt="..."`: decode from a checkpoint alone.

The checkpoint carries the model's config and the tokenizer, so neither the training config nor
its data is needed. `quantize=int8|int4` decodes with weight-only quantized weights; `ckpt=` may
also be a quantized `.safetensors` file written by `lmlab quantize`.

Before any weight is read: the checkpoint's (and a speculative draft's) described model is checked against
the tensors it stores, the draft against the target, the device against this machine, and the model, its
KV cache and logits against the memory they need. A file or a number cannot make this command allocate
what it cannot hold.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lmlab.checkpoint import CheckpointHeader, read_header
from lmlab.cli import CONF_DIR, build, resolved
from lmlab.cli.display import decode_and_print
from lmlab.cli.quiet import silence_library_noise
from lmlab.cli.user_errors import hydra_task, run_hydra_app
from lmlab.config import check_generate_config
from lmlab.config.resources import check_decoding_memory, check_model_memory
from lmlab.decoding.evaluate import DecodeResult, draft_path, sequences_at_once, strategies_by_name
from lmlab.decoding.speculative import check_draft, draft_too_large
from lmlab.devices import resolve_device
from lmlab.errors import ArgumentError, InputError, under
from lmlab.quantization import QuantizationSettings, quantize
from lmlab.quantization.checkpoint import SAFETENSORS
from lmlab.quantization.convert import QUANTIZE_NAMES, quantization_of
from lmlab.spec import model_bytes

log = logging.getLogger("lmlab")


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


def check_drafts(strategies: dict, target: CheckpointHeader, length: int, suite: bool) -> dict[str, CheckpointHeader]:
    """Each speculative strategy's draft checkpoint against the target (vocabulary, tokenizer, context; a warning
    when it is not smaller), from both files' headers: {strategy: the draft's header}."""
    drafts = {}
    for name, decode in strategies.items():
        path = draft_path(decode)
        if path is None:
            continue
        key = f"decoding.{name}" if suite else "decoding"
        with under(key):
            drafts[name] = draft = read_header(path, field="draft")
            check_draft(draft.model, target.model, length, draft.tokenizer_spec, target.tokenizer_spec, Path(path))
        warning = draft_too_large(draft.n_params, target.n_params)
        if warning:
            log.warning("%s.draft=%s: %s", key, path, warning)
    return drafts


def check_memory(strategies: dict, target: CheckpointHeader, drafts: dict, prompts: list[list[int]],
                 max_new_tokens: int, device, cfg: DictConfig, suite: bool) -> None:
    """The models as loading builds them, then each strategy's KV cache and logits, against the device's memory."""
    check_model_memory(target.built_bytes + sum(d.built_bytes for d in drafts.values()),
                       target.n_params + sum(d.n_params for d in drafts.values()), device, f"ckpt={cfg.ckpt}")
    for name, decode in strategies.items():
        batch, beams = sequences_at_once(decode, len(prompts))
        models = [target.model] + ([drafts[name].model] if name in drafts else [])
        keys = {"batch": f"prompt_file={cfg.prompt_file}", "new_tokens": "max_new_tokens",
                "beams": f"decoding.{name}.num_beams" if suite else "decoding.num_beams"}
        check_decoding_memory(models, sum(model_bytes(m) for m in models), batch, beams, max(map(len, prompts)),
                              max_new_tokens, device, keys)


def generate(cfg: DictConfig) -> list[DecodeResult]:
    silence_library_noise()
    check_generate_config(resolved(cfg))
    prompts = read_prompts(cfg)
    settings = quantization(cfg)
    target = read_header(cfg.ckpt)
    tokenizer = target.tokenizer()
    if tokenizer is None:
        raise InputError(f"ckpt={cfg.ckpt}: carries no tokenizer, so prompts cannot be encoded (save the quantized "
                         "model with its tokenizer: save_quantized(model, path, tokenizer))")
    encoded = [tokenizer.encode(p) for p in prompts]
    check_context(target.model, encoded, cfg.max_new_tokens)
    name = HydraConfig.get().runtime.choices.decoding
    suite = "_target_" not in cfg.decoding
    strategies = strategies_by_name(build(cfg.decoding), name)
    drafts = check_drafts(strategies, target, max(map(len, encoded)) + cfg.max_new_tokens, suite)
    device = resolve_device(cfg.device)
    check_memory(strategies, target, drafts, encoded, cfg.max_new_tokens, device, cfg, suite)
    model, _, _ = target.load()
    if settings is not None:
        try:
            model = quantize(model, settings)
        except ArgumentError as e:
            raise e.renamed(QUANTIZE_NAMES) from None
    model.to(device)
    return decode_and_print(cfg.decoding, name, model, tokenizer, encoded, cfg.max_new_tokens, cfg.seed)


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
