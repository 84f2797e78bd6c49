"""Callbacks that tests put into real runs through the config (importable as `helpers`)."""

import os
import signal
import traceback

import lightning as L
import torch


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


class HostReads(L.Callback):
    """Counts, per optimizer step, the ops that would stall a GPU's queue: tensors read to the host
    (.item(), float(), bool(): a device sync) and tensors made from Python numbers (a blocking
    host-to-device copy), from the start of one training batch to the start of the next. Tensors
    the DataLoader builds are host-side work (they reach the device in one non-blocking copy)."""

    steps: dict = {}  # global step -> list of op names, of the last run

    def on_train_start(self, trainer, pl_module):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Recorder(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops = []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
                    stack = traceback.extract_stack()[:-1]
                    if not any("torch/utils/data/" in f.filename for f in stack):
                        caller = next(f for f in reversed(stack) if "/torch/" not in f.filename)
                        self.ops.append(f"{func} from {caller.filename}:{caller.lineno}")
                return func(*args, **(kwargs or {}))

        HostReads.steps = {}
        self.recorder_class, self.recorder = Recorder, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._stop()
        self.recorder = self.recorder_class()
        self.recorder.__enter__()
        HostReads.steps[trainer.global_step] = self.recorder.ops

    def on_train_end(self, trainer, pl_module):
        self._stop()

    def _stop(self):
        if self.recorder is not None:
            self.recorder.__exit__(None, None, None)
            self.recorder = None


class NoSyncBetweenLogs(L.Callback):
    """CUDA's sync debug mode at "error" from the start of a batch that is not a logging step (nor the
    first or last) to the start of the next: any synchronizing call in that window raises."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        strict = 0 < step < trainer.max_steps - 1 and (step + 1) % trainer.log_every_n_steps
        torch.cuda.set_sync_debug_mode("error" if strict else "default")

    def on_train_end(self, trainer, pl_module):
        torch.cuda.set_sync_debug_mode("default")
