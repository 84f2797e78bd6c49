"""Write a model and its tokenizer as a Hugging Face folder: config.json, model.safetensors,
generation_config.json and the tokenizer files, loadable with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` without remote code.

The folder is built in a hidden sibling and renamed into place when complete, so a failure at any point
(unmappable model, full disk, interrupt) leaves no folder, partial or otherwise. The Hugging Face model is
built on the meta device and given lmlab's tensors, so it is never initialised randomly; its strict
``load_state_dict`` checks that the mapping filled every weight with the right shape.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from lmlab.errors import ArgumentError
from lmlab.models.hf_architecture import CLASS_NAMES, GPT2, LLAMA, UnmappableError, hf_config
from lmlab.models.hf_weights import to_hf
from lmlab.models.mup import as_standard

EMBEDDINGS = {LLAMA: "model.embed_tokens.weight", GPT2: "transformer.wte.weight"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ExportDtype = Literal["float32", "bfloat16", "float16"]


def export_hf(model: nn.Module, tokenizer, out: str | Path, dtype: ExportDtype = "float32") -> Path:
    """Write ``model`` (lmlab's GPT, or a Hugging Face model inside lmlab) and ``tokenizer`` to the new folder
    ``out``, weights in ``dtype``. UnmappableError for a model no Hugging Face class computes exactly
    (or a quantized one), ArgumentError for an ``out`` that exists non-empty or cannot be written."""
    from lmlab.quantization.convert import settings_of

    if dtype not in DTYPES:  # not @checked: that would read ``out: str | Path`` as a config string
        raise ArgumentError("dtype", dtype, f"must be one of {', '.join(DTYPES)}")
    check_out(out)
    settings = settings_of(model)
    if settings is not None:
        raise UnmappableError(
            f"a quantized model ({settings.mode}): transformers reads quantized weights only in its quantizers' "
            "formats (bitsandbytes, GPTQ, AWQ, compressed-tensors...), whose layouts differ from lmlab's; export the "
            "float checkpoint and quantize it with one of those")
    from transformers.utils import logging as hf_logging

    hf = _hf_model(model, tokenizer, DTYPES[dtype])
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one shard of a small model: no bar on the command line
    try:
        with staged_folder(out) as folder:
            hf.save_pretrained(folder)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            _readable_by_older_readers(folder, getattr(model, "max_seq_len", None))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return Path(out).expanduser()


def _hf_model(model: nn.Module, tokenizer, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from lmlab.models.hf import HFCausalLM

    tokens = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    if isinstance(model, HFCausalLM):  # already a transformers model: its own class writes it
        hf = copy.deepcopy(model.hf).to(dtype)
    else:
        state, config = as_standard(model.state_dict(), model.config)  # μP's multipliers inside the weights
        family, kwargs = hf_config(config, **tokens)
        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kwargs), dtype=dtype)
        state = {name: torch.empty(t.shape, dtype=dtype).copy_(t) for name, t in
                 to_hf(state, config, family).items()}
        if config.tie_embeddings:
            state["lm_head.weight"] = state[EMBEDDINGS[family]]
        hf.load_state_dict(state, strict=True, assign=True)
        hf.tie_weights()
        hf.config.architectures = [CLASS_NAMES[family]]
    hf.generation_config = GenerationConfig(**{k: v for k, v in tokens.items() if v is not None})
    return hf.eval()


def _readable_by_older_readers(folder: Path, max_length: int | None) -> None:
    """Keys that transformers 4 and the vLLM/TGI readers of that era look for, beside transformers 5's own:
    rope_theta at the top level (and a null rope_scaling: plain RoPE) as well as inside rope_parameters,
    torch_dtype as well as dtype, and the tokenizer class as PreTrainedTokenizerFast (transformers 5 writes
    TokenizersBackend, a name older versions lack; in 5 the two are the same class). transformers 5 reads
    its own keys first."""
    config = _read_json(folder / "config.json")
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        config.setdefault("rope_scaling", None)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    _write_json(folder / "config.json", config)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = _read_json(folder / "tokenizer_config.json")
        tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
        if max_length is not None:
            tokenizer["model_max_length"] = max_length
        _write_json(folder / "tokenizer_config.json", tokenizer)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def check_out(out: str | Path) -> Path:
    """``out`` must not exist, or be an empty folder."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ArgumentError("out", str(out), "exists and is not a folder; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ArgumentError("out", str(out), "exists and is not empty; give a new or empty folder")
    return out


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A hidden sibling of ``out`` to fill; renamed to ``out`` when the block ends, removed (with any parent
    folders it made) when the block raises. An OSError (unwritable, disk full) becomes an InputError naming
    ``out``."""
    out = check_out(out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        yield staging
        if out.is_dir():
            out.rmdir()  # empty (checked): rename needs the name free
        staging.rename(out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            raise ArgumentError("out", str(out), f"cannot be written ({e.strerror or e})") from None
        raise
