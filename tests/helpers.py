"""Callbacks that tests put into real runs through the config, and readers of what runs leave behind
(importable as `helpers`)."""

import csv
import os
import signal
import struct
import time
from pathlib import Path

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


class RaiseAtStep(L.Callback):
    """Raises RuntimeError after optimizer step `step`: a job that fails in the middle of training."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"deliberate failure at step {self.step}")


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


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run directory's metrics.csv."""
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]
