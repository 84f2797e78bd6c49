"""`python tests/pause_run.py <point> <step> <marker> <train.py overrides...>`: a real `python train.py`
that stops still at one point of the run, creates <marker> and waits there, so a test can SIGKILL it
at exactly that point.

Points:
  batch_start       before optimizer step <step> (mid-epoch, or right after a validation's checkpoint)
  checkpoint_write  halfway through writing the first checkpoint after optimizer step <step>: half of
                    the serialised bytes are in the temporary file, fsynced, when the marker appears
  prepare_data      while the data is prepared (before Lightning's fit; <step> unused)
"""

import io
import os
import sys
import time
from pathlib import Path


def pause(marker: Path) -> None:
    marker.touch()
    while True:
        time.sleep(60)


def main() -> None:
    point, step, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    from lmlab.checkpoint_io import SafeCheckpointIO
    from lmlab.cli.train import main as train_main
    from lmlab.module import LitLM

    if point == "batch_start":
        original = LitLM.on_train_batch_start

        def on_train_batch_start(self, batch, batch_idx):
            if self.trainer.global_step == step:
                pause(marker)
            return original(self, batch, batch_idx)

        LitLM.on_train_batch_start = on_train_batch_start
    elif point == "checkpoint_write":
        original = SafeCheckpointIO.write

        def write(self, checkpoint, f):
            if checkpoint["global_step"] < step:
                return original(self, checkpoint, f)
            buffer = io.BytesIO()
            original(self, checkpoint, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            pause(marker)

        SafeCheckpointIO.write = write
    elif point == "prepare_data":
        from lmlab.data import LMDataModule

        LMDataModule.prepare_data = lambda self: pause(marker)
    else:
        raise SystemExit(f"unknown point {point!r}")
    sys.argv = [str(Path(__file__).resolve().parents[1] / "train.py"), *sys.argv[4:]]
    train_main()


if __name__ == "__main__":
    main()
