"""How Lightning writes and reads lmlab's checkpoint files: atomically, and without unpickling code.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed over
the target, and the folder is fsynced: a crash, SIGKILL or full disk at any moment leaves either the
previous file or the new one under the name, never half of one. Reading goes through
``lmlab.checkpoint.read_checkpoint`` (``weights_only=True``, errors that name the file), so resuming
with ``ckpt_path=`` is as safe as ``generate.py ckpt=``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lmlab.checkpoint import read_checkpoint
from lmlab.errors import CheckpointError

TEMP_MARK = ".tmp-"


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
            temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
            try:
                with open(temp, "wb") as f:
                    self.write(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
            _fsync_directory(path.parent)
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint {path}: {e.strerror or e} (errno {e.errno}); "
                f"the previous {path.name}, if any, is intact"
            ) from e

    def write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        """Serialise into the open temporary file (a separate step so tests can interrupt it)."""
        torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu", field="ckpt_path")


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory's entries are flushed by fsync on it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
