"""Callbacks that tests put into real runs through the config, and readers of what runs leave behind
(importable as `helpers`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import struct
import sysconfig
import time
import traceback
from pathlib import Path

import lightning as L
import torch

from lmlab.data import TextFiles
from lmlab.report import read_metrics_csv


class SigtermAtStep(L.Callback):
    """Sends this process a real SIGTERM after optimizer step `step`, as a cluster scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class LossRecorder(L.Callback):
    """Appends (global step, loss) of every training batch to `<run dir>/recorded_losses.jsonl`.

    The record belongs to the run directory, not to the process: two runs never see each other's
    steps, and a resumed run appends to what its interrupted part recorded.
    """

    FILE = "recorded_losses.jsonl"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(Path(trainer.default_root_dir) / self.FILE, "a") as f:
            f.write(json.dumps([trainer.global_step, outputs["loss"].item()]) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> dict[int, float]:
        """{global step: loss}; a step recorded twice keeps its latest loss."""
        lines = (Path(run_dir) / cls.FILE).read_text().splitlines()
        return {step: loss for step, loss in map(json.loads, lines)}


class RaiseAtStep(L.Callback):
    """Raises RuntimeError after optimizer step `step`: a job that fails in the middle of training."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"deliberate failure at step {self.step}")


class SaveInitialWeights(L.Callback):
    """Saves the model's state dict at the start of fit to `<run dir>/initial_weights.pt`: the real
    initialisation of a run, for comparing a trained model against its own starting point."""

    FILE = "initial_weights.pt"

    def on_fit_start(self, trainer, pl_module):
        torch.save(pl_module.model.state_dict(), Path(trainer.default_root_dir) / self.FILE)


STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_modules(folder: Path, names) -> Path:
    """``folder`` holding copies of the named modules of this Python's standard library (a small real corpus)."""
    for name in names:
        shutil.copy(STDLIB / name, folder / name)
    return folder


def make_dm(datamodule_class, corpus_dir: Path, cache_dir: Path, **settings):
    """A DataModule (LMDataModule, CodePairsDataModule) over the files of corpus_dir, a fifth held out,
    its cache in cache_dir; `settings` are the rest of its arguments (vocab_size, block_size, ...)."""
    return datamodule_class(TextFiles(str(corpus_dir)), **{"val_fraction": 0.2, "cache_dir": str(cache_dir),
                                                           **settings})


def read_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """A run directory's metrics.csv as {column: {step: value}}, read as `lmlab report` reads it (rows
    are sparse; non-finite values are left out; a step written twice keeps its latest value)."""
    return {
        key: dict(zip(steps.tolist(), values.tolist(), strict=True))
        for key, (steps, values) in read_metrics_csv(Path(run_dir) / "metrics.csv").items()
    }


def column(metrics: dict[str, dict[int, float]], key: str) -> list[float]:
    """The values of one metric in step order ([] when it was never logged)."""
    return list(metrics.get(key, {}).values())


def rows_with(run_dir: Path, key: str) -> int:
    """How many rows of metrics.csv carry `key`: read_metrics keeps one value per step, so a step
    logged twice (e.g. by two DDP ranks) shows only here."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row.get(key))


def wandb_records(path):
    """Records of a W&B `.wandb` file: LevelDB-log framing (32 KiB blocks, 7-byte headers) of protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def finished_wandb_records(run_file, timeout: float = 60.0) -> list:
    """The records of a W&B run file once its exit record is there (wandb-core may still be writing
    after finish() on a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{run_file} never got its exit record"
        time.sleep(0.5)


@contextlib.contextmanager
def one_thread():
    """Tiny models are dominated by per-op overhead: extra intra-op threads only contend on a shared
    CPU (10x slower on two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def left_padded_prompts(batch: int, length: int, vocab: int, first_id: int, pad: int, seed: int = 0):
    """Random prompts of ids in [first_id, vocab): (ids [batch, length], mask) for batch > 1, row r
    left-padded by 2r % length positions; (ids [1, length], None) for batch 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(first_id, vocab, (batch, length), generator=g)
    if batch == 1:
        return ids, None
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, : 2 * row % length] = 0
    return ids.masked_fill(mask == 0, pad), mask


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
