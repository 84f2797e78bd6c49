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
        self._start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # nothing trained since the start (a failed resume, a crash in set-up): the checkpoint on disk is
        # newer than this model; a refused write (full disk): keep the last good one
        if self._start_step is None or trainer.global_step == self._start_step or isinstance(
                exception, CheckpointError):
            return
        trainer.save_checkpoint(self.path)  # atomic (lmlab.checkpoint_io): the old file or the new, never half
