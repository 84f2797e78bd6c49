"""Callbacks that tests put into real runs through the config (importable as `helpers`)."""

import os
import signal

import lightning as L


class SigtermAtStep(L.Callback):
    """Sends this process a real SIGTERM after optimizer step `step`, as a cluster scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class LossRecorder(L.Callback):
    """Records (global step, loss) of every training batch in a class-level list."""

    losses: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        LossRecorder.losses.append((trainer.global_step, outputs["loss"].item()))
