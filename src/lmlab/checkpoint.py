"""Self-describing checkpoints that are safe to load: a ``.ckpt`` alone rebuilds its model and tokenizer.

Lightning checkpoints carry an ``lmlab`` entry (written by ``LitLM.on_save_checkpoint``) with a format
version, the model's class and constructor config and the tokenizer's JSON, so ``generate.py`` and
distillation need neither the original Hydra config nor the data. Everything in it is tensors and
plain containers, so every file is read with ``torch.load(weights_only=True)``: a checkpoint someone
shared can hold weights, never code that runs while it is unpickled.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from lmlab.errors import CheckpointError, InputError, first_line
from lmlab.quantization.checkpoint import SAFETENSORS, load_quantized, read_quantized_header
from lmlab.spec import build_model, build_tokenizer

# version of the ``lmlab`` entry; bump when its layout changes and keep reading the older ones
FORMAT_VERSION = 1


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


def check_checkpoint(path: str | Path, field: str = "ckpt") -> None:
    """That ``path`` names a checkpoint lmlab can load (its entries read safely, its weights not): a config's
    rules call this before any work."""
    if str(path).endswith(SAFETENSORS):
        read_quantized_header(path, field)
    elif is_hf_folder(path):
        from lmlab.models.pretrained import pretrained_architecture

        try:
            pretrained_architecture(path)
        except InputError as e:
            raise CheckpointError(field, path, str(e)) from None
    else:
        read_checkpoint(resolve_checkpoint(path, field), field=field, mmap=True)


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
    (:func:`lmlab.models.pretrained.import_hf`); its dict holds the folder's config.json."""
    if str(path).endswith(SAFETENSORS):
        return load_quantized(path, field)
    if is_hf_folder(path):
        from lmlab.models.pretrained import import_hf

        try:
            return import_hf(path)
        except InputError as e:
            raise CheckpointError(field, path, str(e)) from None
    path = resolve_checkpoint(path, field)
    ckpt = read_checkpoint(path, map_location, field)
    if not isinstance(ckpt.get("lmlab"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(field, path, "was not written by lmlab (no 'lmlab' entry)")
    meta = ckpt["lmlab"]
    model = build_model(meta["model"])
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(field, path, f"its weights do not fit the model it describes: {first_line(e)}") from None
    tokenizer = build_tokenizer(meta["tokenizer"]) if meta.get("tokenizer") else None
    return model.eval(), tokenizer, ckpt
