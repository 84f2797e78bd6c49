"""How Lightning writes and reads lmlab's checkpoint files: atomically, and without unpickling code.

Writes go through ``lmlab.atomic``: a crash, SIGKILL or full disk at any moment leaves either the
previous file or the new one under the name, never half of one. Reading goes through
``lmlab.checkpoint.read_checkpoint`` (``weights_only=True``, errors that name the file), so resuming
with ``ckpt_path=`` is as safe as ``generate.py ckpt=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lmlab.atomic import atomic_write
from lmlab.checkpoint import read_checkpoint
from lmlab.errors import CheckpointError


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            atomic_write(path, lambda f: self.write(checkpoint, f))
        except OSError as e:
            raise CheckpointError("", path, f"could not write checkpoint {path}: {e.strerror or e} (errno {e.errno}); "
                                  f"the previous {path.name}, if any, is intact") from e

    def write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        """Serialise into the open temporary file (a separate step so tests can interrupt it)."""
        torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu", field="ckpt_path")
