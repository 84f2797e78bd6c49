"""Crash safety with real processes and real files: SIGKILL at three points of a run then a resume that
equals the uninterrupted run, checkpoints that never run code, full and read-only disks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV
from helpers import read_metrics, rows_with

from lmlab.checkpoint import load_checkpoint, read_checkpoint
from lmlab.checkpoint_io import SafeCheckpointIO
from lmlab.cli.train import train
from lmlab.errors import CheckpointError, InputError

PAUSE_RUN = str(Path(__file__).with_name("pause_run.py"))
# dropout makes the loss depend on the RNG state, so a resume must restore it; ckpt_path=auto makes the
# first start fresh and the resubmitted identical command a resume (as a requeued SLURM job)
FAULT_RUN = ("model.dropout=0.1", "trainer.max_steps=9", "trainer.val_check_interval=3", "callbacks=model_checkpoint",
             "samples.num_prompts=0", "ckpt_path=auto")
# (where the run is paused and killed, before/at which optimizer step, the step the resume starts from)
KILLS = {
    "mid_epoch": ("batch_start", 5, 3),
    "after_validation": ("batch_start", 6, 6),
    "inside_checkpoint_write": ("checkpoint_write", 6, 3),
}


def step_values(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of one metrics.csv column, asserting that no step was logged twice."""
    values = read_metrics(run_dir).get(key, {})
    assert rows_with(run_dir, key) == len(values), f"{run_dir.name}: a step of {key} was logged twice"
    return values


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=log.parent,
                            env={**os.environ, **SUBPROCESS_ENV})


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-5000:]


def test_sigkill_at_any_point_then_resume_equals_the_uninterrupted_run(train_command, tmp_path):
    straight = tmp_path / "straight"
    runs = {"straight": start(train_command(*FAULT_RUN, run_dir=straight), tmp_path / "straight.log")}
    for name, (point, step, _) in KILLS.items():
        logger = ["logger=wandb"] if name == "after_validation" else []
        script = [PAUSE_RUN, point, str(step), str(tmp_path / f"{name}.paused")]
        runs[name] = start(train_command(*FAULT_RUN, *logger, run_dir=tmp_path / name, script=script),
                           tmp_path / f"{name}.log")
    deadline = time.monotonic() + 600
    for name in KILLS:
        while not (tmp_path / f"{name}.paused").exists():
            assert runs[name].poll() is None, (tmp_path / f"{name}.log").read_text()[-5000:]
            assert time.monotonic() < deadline, f"{name} never reached its pause point"
            time.sleep(0.2)
        runs[name].send_signal(signal.SIGKILL)
        runs[name].wait()

    for name, (_, _, resume_step) in KILLS.items():  # what the kill left: the newest complete checkpoint
        checkpoints = tmp_path / name / "checkpoints"
        assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == resume_step
    assert list((tmp_path / "inside_checkpoint_write" / "checkpoints").glob(".*.ckpt.tmp-*"))  # the half file

    resumed = {name: start(train_command(*FAULT_RUN, *(["logger=wandb"] if name == "after_validation" else []),
                                         run_dir=tmp_path / name), tmp_path / f"{name}.resumed.log")
               for name in KILLS}
    finish(runs["straight"], tmp_path / "straight.log")
    for name, proc in resumed.items():
        finish(proc, tmp_path / f"{name}.resumed.log")

    expected_loss, expected_val = step_values(straight, "train/loss"), step_values(straight, "val/loss")
    assert sorted(expected_loss) == list(range(9)) and len(expected_val) == 3
    final = read_checkpoint(straight / "checkpoints" / "last.ckpt")
    for name in KILLS:
        run_dir = tmp_path / name
        losses = step_values(run_dir, "train/loss")
        assert sorted(losses) == sorted(expected_loss), name
        for step, loss in expected_loss.items():
            assert losses[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (name, step)
        assert step_values(run_dir, "val/loss") == pytest.approx(expected_val, rel=1e-6), name
        state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        assert state["global_step"] == 9
        for key, value in final["state_dict"].items():
            torch.testing.assert_close(state["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=f"{name} {key}")
        assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))  # the next write cleaned up the half file

    # the resumed W&B run continues the same run: two offline run folders, one run id
    wandb_runs = sorted((tmp_path / "after_validation" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({d.name.rsplit("-", 1)[-1] for d in wandb_runs}) == 1


class EvilPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_ckpt(trained_run, tmp_path) -> tuple[Path, Path]:
    """A real lmlab checkpoint with a payload added: loading it unsafely would create the marker."""
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["lmlab"]["extra"] = EvilPayload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def generate_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **SUBPROCESS_ENV})


def test_a_checkpoint_that_would_run_code_is_refused_by_every_loading_path(evil_ckpt, make_cfg, trained_run,
                                                                           tmp_path):
    path, marker = evil_ckpt
    refused = r"refused, loading it would run code from inside the file \(posix.system\)"
    with pytest.raises(CheckpointError, match=f"ckpt={path}: {refused}"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"loss.teacher={path}: {refused}"):
        train(make_cfg("loss=distill", f"loss.teacher={path}"))
    with pytest.raises(CheckpointError, match=f"decoding.draft={path}: {refused}"):
        train(make_cfg("decoding=speculative", f"decoding.draft={path}"))
    with pytest.raises(CheckpointError, match=f"ckpt_path={path}: {refused}"):
        train(make_cfg(f"ckpt_path={path}"))
    proc = generate_py(f"ckpt={path}", "prompt=def f(", cwd=tmp_path)
    assert proc.returncode != 0 and "refused, loading it would run code" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content", ["text", "truncated", "empty"])
def test_a_broken_checkpoint_is_named_with_the_reason(trained_run, make_cfg, tmp_path, content):
    good = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    path = tmp_path / "broken.ckpt"
    path.write_bytes({"text": b"not a checkpoint\n", "truncated": good[: len(good) // 2], "empty": b""}[content])
    with pytest.raises(CheckpointError, match=f"ckpt={path}: \\(\\d+ bytes\\) is truncated, corrupt or not a PyTorch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"ckpt_path={path}: \\(\\d+ bytes\\) is truncated"):
        train(make_cfg(f"ckpt_path={path}"))


def test_a_hugging_face_model_folder_never_runs_code_it_names(tmp_path, make_cfg):
    """model=hf model.pretrained=<folder> whose config asks for custom code: refused (trust_remote_code
    is false unless model.trust_remote_code=true), and the folder's Python never runs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder, marker = tmp_path / "hf_model", tmp_path / "REMOTE_CODE_RAN"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_gpt", auto_map={"AutoConfig": "evil.EvilConfig",
                                                  "AutoModelForCausalLM": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(Exception, match="trust_remote_code"):
        train(make_cfg("model=hf", f"model.pretrained={folder}"))
    assert not marker.exists()


class FullDisk(SafeCheckpointIO):
    """Writes fail once `fail_from_step` is reached, halfway through, as a full disk does."""

    fail_from_step = 4

    def write(self, checkpoint, f):
        if checkpoint["global_step"] < self.fail_from_step:
            return super().write(checkpoint, f)
        f.write(b"x" * 1000)
        raise OSError(28, "No space left on device")


def test_full_disk_while_saving_keeps_the_previous_checkpoint(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("lmlab.cli.train.SafeCheckpointIO", FullDisk)
    cfg = make_cfg("trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks=model_checkpoint")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*: No space left on device \(errno 28\); "
                                              r"the previous .* is intact"):
        train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 3
    assert load_checkpoint(checkpoints / "last.ckpt")[0] is not None
    assert not list(checkpoints.glob(".*.tmp-*"))


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_read_only_checkpoint_folder_keeps_the_previous_checkpoint(make_cfg, tmp_path):
    """A real read-only filesystem (a tmpfs remounted read-only) under checkpoints/ mid-run."""
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    if not _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(checkpoints)):
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN")
    try:
        train(make_cfg("trainer.max_steps=3", "trainer.val_check_interval=3", "callbacks=model_checkpoint",
                       run_dir=run_dir))
        assert _mount("-o", "remount,ro", str(checkpoints))
        with pytest.raises(CheckpointError, match=r"could not write checkpoint .*Read-only file system"):
            train(make_cfg("trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks=model_checkpoint",
                           "ckpt_path=last", run_dir=run_dir))
        assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 3
        with pytest.raises(InputError, match=f"hydra.run.dir={checkpoints} cannot be written \\(Read-only"):
            train(make_cfg(run_dir=checkpoints))  # a read-only run directory: refused before any work
    finally:
        subprocess.run(["umount", str(checkpoints)], capture_output=True)


class CrashInSetup(L.Callback):
    """Set-up fails, as a broken device or data path would, after the Trainer started but before any step."""

    def setup(self, trainer, pl_module, stage):
        raise RuntimeError("set-up failed")


def test_a_crash_before_any_step_keeps_the_last_checkpoint(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg("trainer.max_steps=3", "trainer.val_check_interval=3", run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(RuntimeError, match="set-up failed"):
        train(make_cfg("trainer.max_steps=6", "ckpt_path=last", "+callbacks.crash._target_=test_faults.CrashInSetup",
                       run_dir=run_dir))
    assert last.read_bytes() == before
