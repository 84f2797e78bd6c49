"""Self-describing checkpoints that are safe to load: a ``.ckpt`` alone rebuilds its model and tokenizer.

Lightning checkpoints carry an ``lmlab`` entry (written by ``LitLM.on_save_checkpoint``) with a format
version, the model's class and constructor config and the tokenizer's JSON, so ``generate.py`` and
distillation need neither the original Hydra config nor the data. Everything in it is tensors and
plain containers, so every file is read with ``torch.load(weights_only=True)``: a checkpoint someone
shared can hold weights, never code that runs while it is unpickled.

What a file says about its model is a claim: :func:`read_header` builds the described model on the meta
device and checks it against the shapes of the tensors the file stores (memory-mapped or read from a
header, never loaded), so a file whose config claims a larger model than it holds costs milliseconds and
megabytes, not the gigabytes of building that model. Only then does :meth:`CheckpointHeader.load` allocate.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmlab.errors import CheckpointError, InputError, first_line
from lmlab.quantization.checkpoint import REBUILT_FROM, SAFETENSORS, describe_quantized, load_quantized
from lmlab.spec import build_model, build_tokenizer, model_bytes, model_on_meta, tokenizer_spec, weights_mismatch

# version of the ``lmlab`` entry; bump when its layout changes and keep reading the older ones
FORMAT_VERSION = 1
PREFIX = "model."  # the model's tensors in a Lightning checkpoint's state_dict


def resolve_checkpoint(path: str | Path, field: str = "ckpt") -> Path:
    """A .ckpt file, or a run directory (its checkpoints/best.ckpt, else checkpoints/last.ckpt), or a Hugging Face
    model folder (returned as it is: :func:`load_checkpoint` reads it).

    ``field``: the argument that gave the path, which errors name."""
    path = Path(path).expanduser()
    if is_hf_folder(path):
        return path
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(field, path, "a run directory, but it has no checkpoints/best.ckpt or last.ckpt")
    if not path.is_file():
        raise CheckpointError(field, path, "does not exist (give a .ckpt file or a run directory)")
    return path


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a Hugging Face config.json and no lmlab checkpoints/ (a run directory has those)."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


@dataclass
class CheckpointHeader:
    """A checkpoint read without its weights (its tensors' shapes checked against the model it describes)."""

    path: Path
    field: str  # the argument that gave the path, which errors name
    model: nn.Module  # the described model, on the meta device: sizes and shapes, no memory
    built_bytes: int  # what loading allocates for the model (a quantized one is built in float first)
    n_params: int  # parameters of the float model (before any quantization)
    tokenizer_spec: dict | None
    entries: dict  # the checkpoint's dict (tensors memory-mapped), the safetensors header, or {"hf_config": ...}

    def tokenizer(self):
        return build_tokenizer(self.tokenizer_spec) if self.tokenizer_spec else None

    def load(self):
        """(model in eval mode on CPU, tokenizer or None, entries): the weights read and the model built."""
        if str(self.path).endswith(SAFETENSORS):
            return load_quantized(self.path, self.field)
        if is_hf_folder(self.path):
            from lmlab.models.pretrained import import_hf

            try:
                return import_hf(self.path)
            except InputError as e:
                raise CheckpointError(self.field, self.path, str(e)) from None
        model = build_model(self.entries["lmlab"]["model"])
        state = {k[len(PREFIX):]: v for k, v in self.entries["state_dict"].items() if k.startswith(PREFIX)}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(self.field, self.path, f"its weights do not fit the model it describes: "
                                  f"{first_line(e)}") from None
        return model.eval(), self.tokenizer(), self.entries


def read_header(path: str | Path, field: str = "ckpt", map_location="cpu") -> CheckpointHeader:
    """What a checkpoint (a .ckpt or run directory, a quantized .safetensors, a Hugging Face folder) says about
    its model, checked against the tensors it stores before anything is allocated: the cheap first step of
    loading, and what a config's rules call to check a path before any work."""
    if str(path).endswith(SAFETENSORS):
        model, built, n_params, header = describe_quantized(path, field)
        return CheckpointHeader(Path(path).expanduser(), field, model, built, n_params, header.get("tokenizer"),
                                header)
    path = resolve_checkpoint(path, field)
    if is_hf_folder(path):
        return _read_hf_folder(path, field)
    ckpt = read_checkpoint(path, map_location, field, mmap=True)
    if not isinstance(ckpt.get("lmlab"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(field, path, "was not written by lmlab (no 'lmlab' entry)")
    stored = {k[len(PREFIX):]: list(v.shape) for k, v in ckpt["state_dict"].items()
              if k.startswith(PREFIX) and isinstance(v, torch.Tensor)}
    try:
        model = model_on_meta(ckpt["lmlab"]["model"], len(stored))
    except REBUILT_FROM as e:
        raise CheckpointError(field, path, f"does not describe a model this lmlab can rebuild: {e}") from None
    _check_stored(model, stored, path, field, "its 'lmlab' entry")
    return CheckpointHeader(path, field, model, model_bytes(model), parameters(model), ckpt["lmlab"].get("tokenizer"),
                            ckpt)


def _read_hf_folder(path: Path, field: str) -> CheckpointHeader:
    from lmlab.models.pretrained import lmlab_state, pretrained_architecture, read_config, read_tensors, read_tokenizer

    try:
        stored = read_tensors(path, meta=True)
        spec = {"kind": "gpt", "config": pretrained_architecture(path)}
        model = model_on_meta(spec, len(stored))
        mapped = {name: list(t.shape) for name, t in lmlab_state(stored, model.config).items()}
        tokenizer = read_tokenizer(path)
    except KeyError as e:
        raise CheckpointError(field, path, f"its weight files lack the tensor {e} that its config.json's model "
                              "needs") from None
    except InputError as e:
        raise CheckpointError(field, path, str(e)) from None
    except REBUILT_FROM as e:
        raise CheckpointError(field, path, f"its config.json describes no model lmlab can rebuild: {e}") from None
    _check_stored(model, mapped, path, field, "its config.json")
    return CheckpointHeader(path, field, model, model_bytes(model), parameters(model),
                            tokenizer and tokenizer_spec(tokenizer), {"hf_config": read_config(path)})


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_stored(model: nn.Module, stored: dict, path: Path, field: str, describer: str) -> None:
    mismatch = weights_mismatch(model, stored)
    if mismatch:
        raise CheckpointError(field, path, f"{describer} describes a model that its tensors do not hold: {mismatch}; "
                              "refused before building it")


def check_checkpoint(path: str | Path, field: str = "ckpt") -> CheckpointHeader:
    """That ``path`` names a checkpoint lmlab can load, its described model matching its tensors (no weight
    read): a config's rules call this before any work."""
    return read_header(path, field)


def read_checkpoint(path: str | Path, map_location="cpu", field: str = "ckpt", mmap: bool = False) -> dict:
    """The checkpoint's dict, read with ``weights_only=True``; every failure is a ``CheckpointError``
    naming ``field`` and the file, never a raw unpickling traceback. ``mmap``: tensors stay on disk
    until touched (cheap when only metadata is needed)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # an object whose unpickling would call that function
        if found is None:
            raise _corrupt(path, field, e) from None
        raise CheckpointError(
            field, path, f"refused, loading it would run code from inside the file ({found.group(1)}); lmlab "
            "reads checkpoints with torch.load(weights_only=True), which allows only tensors and plain containers"
        ) from None
    except Exception as e:  # a truncated zip, a text file, an empty file: many exception types
        raise _corrupt(path, field, e) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(field, path, f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    version = ckpt.get("lmlab", {}).get("format_version", 0) if isinstance(ckpt.get("lmlab"), dict) else 0
    if version > FORMAT_VERSION:
        raise CheckpointError(field, path, f"has checkpoint format {version}; this lmlab reads up to "
                              f"{FORMAT_VERSION} (upgrade lmlab)")
    return ckpt


def _corrupt(path, field: str, error: Exception) -> CheckpointError:
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    return CheckpointError(
        field, path, f"({size} bytes) is truncated, corrupt or not a PyTorch checkpoint: {first_line(error)}"
    )


def load_checkpoint(path: str | Path, map_location="cpu", field: str = "ckpt"):
    """(model in eval mode, tokenizer, raw checkpoint dict) from a checkpoint file or run directory.

    A ``.safetensors`` file is a quantized checkpoint (``lmlab quantize``); its dict is the header metadata.
    A Hugging Face folder of a Llama or GPT-2 model (config.json, no checkpoints/) becomes lmlab's own GPT
    (:func:`lmlab.models.pretrained.import_hf`); its dict holds the folder's config.json. The model the file
    describes is checked against its stored tensors before it is built (:func:`read_header`)."""
    return read_header(path, field, map_location).load()
