"""Save a checkpoint when training stops on an exception: Ctrl-C, SIGTERM, a halt, a crash."""

from pathlib import Path

import lightning as L

from lmlab.errors import CheckpointError


class CheckpointOnInterrupt(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` from ``on_exception``.

    Lightning's OnExceptionCheckpoint does the same but also turns every later ``fit(ckpt_path=None)``
    into an implicit resume; lmlab resumes only when asked (``ckpt_path=last``).
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, CheckpointError):  # the disk refused a checkpoint: keep the last good one
            return
        trainer.save_checkpoint(self.path)  # atomic (lmlab.checkpoint_io): the old file or the new, never half
