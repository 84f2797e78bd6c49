"""A run directory belongs to one run: real `python train.py` processes into a directory that holds a run, a
second training while the first holds the directory's lock, stale locks, and paths that are no directory."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SUBPROCESS_ENV, tiny_overrides
from helpers import read_metrics, rows_with

from lmlab.cli.run_dir import resume_checkpoint
from lmlab.cli.run_lock import LOCK_FILE, RunLock
from lmlab.cli.train import train
from lmlab.errors import InputError

PAUSE_RUN = str(Path(__file__).with_name("pause_run.py"))
# the fastest real run: two steps, no checkpoint (nor Lightning's default one), no samples
QUICK = ("callbacks=none", "+trainer.enable_checkpointing=false", "trainer.max_steps=2", "sched.warmup_steps=0.5",
         "samples.num_prompts=0")


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **SUBPROCESS_ENV})


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (Hydra's .hydra/ and the log included): its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def refused(proc: subprocess.CompletedProcess, alone: bool = True) -> str:
    """The one line a refused command prints (exit status 2, no traceback). ``alone``: nothing else is printed
    (else Lightning's lines about the devices it found, printed while the run's objects are built, come first)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and (len(lines) == 1 or not alone), proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def finished_run(corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """A run that `python train.py` finished (6 steps, a checkpoint at each validation)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = python(str(ROOT / "train.py"), *tiny_overrides(corpus_dir, cache_dir, f"hydra.run.dir={run_dir}"),
                  cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_a_fresh_run_into_a_finished_run_is_refused_and_touches_nothing(finished_run, corpus_dir, cache_dir,
                                                                        trained_run, tmp_path):
    before = snapshot(finished_run)
    assert {"run.json", "metrics.csv", "checkpoints/last.ckpt", ".hydra/config.yaml"} <= set(before)
    train_py = [str(ROOT / "train.py"), *tiny_overrides(corpus_dir, cache_dir, f"hydra.run.dir={finished_run}")]
    for change in ([], ["optimizer.lr=1e-2"]):  # the same command again, and another run
        line = refused(python(*train_py, *change, cwd=tmp_path))
        assert line == (f"Error: hydra.run.dir={finished_run} already holds a run (run.json, config.yaml, metrics.csv,"
                        " checkpoints); resume it with ckpt_path=last (or ckpt_path=auto), or start this run in a new "
                        "directory (without hydra.run.dir, a new timestamped one)")
    other = trained_run / "checkpoints" / "last.ckpt"
    line = refused(python(*train_py, f"ckpt_path={other}", cwd=tmp_path))
    assert f"ckpt_path={other}: is another run's checkpoint, and hydra.run.dir={finished_run} holds a run" in line
    assert snapshot(finished_run) == before  # not a byte, not a time stamp: Hydra's own files neither


def test_a_copied_run_directory_resumes_into_its_own_last_checkpoint(finished_run, corpus_dir, cache_dir, tmp_path):
    """A run directory copied (or moved) and resumed there: its checkpoints name the old folder, yet last.ckpt is
    the newest model afterwards, never left behind a last-v1.ckpt that `ckpt_path=last` would not see."""
    import shutil

    import torch

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    proc = python(str(ROOT / "train.py"), *tiny_overrides(corpus_dir, cache_dir, f"hydra.run.dir={copy}"),
                  "ckpt_path=last", "trainer.max_steps=9", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9


def test_a_second_training_is_refused_while_the_first_holds_the_directory(train_command, tmp_path):
    """A real first training, paused while it prepares its data (lock held, before Lightning's fit), a real second
    one refused naming it; SIGTERM then ends the first with status 143 and releases the lock."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    first = subprocess.Popen(train_command(*QUICK, run_dir=run_dir, script=[PAUSE_RUN, "prepare_data", "0",
                                                                               str(marker)]),
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **SUBPROCESS_ENV})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.2)
        owner = json.loads((run_dir / LOCK_FILE).read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        for resume in ("ckpt_path=auto", "ckpt_path=last"):
            second = subprocess.run(train_command(*QUICK, resume, run_dir=run_dir), cwd=tmp_path, capture_output=True,
                                    text=True, timeout=300, env={**os.environ, **SUBPROCESS_ENV})
            assert refused(second).startswith(
                f"Error: hydra.run.dir={run_dir} is in use by another training: pid {first.pid}@{owner['host']} "
                f"since {owner['since']} (")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    finally:
        first.kill()
    assert not (run_dir / LOCK_FILE).exists()


def dead_pid() -> int:
    """The pid of a real process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_with_one_line(make_cfg, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid = dead_pid()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "yesterday",
                                                 "command": "python train.py"}))
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        train(make_cfg(*QUICK, run_dir=run_dir))
    assert f"hydra.run.dir={run_dir}: taking over the lock of pid {pid}@{socket.gethostname()} since yesterday " \
           "(python train.py): that process is gone" in caplog.text
    assert sorted(read_metrics(run_dir)["train/loss"]) == [0, 1] and not (run_dir / LOCK_FILE).exists()


def test_locks_that_cannot_be_checked_or_read(tmp_path, caplog):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "since": "09:00"}))
    with pytest.raises(InputError, match=f"^run is in use by another training: pid 1@gpu-node-7 since 09:00 .*; if "
                                         f"that run is gone, delete {lock}$"):
        RunLock(tmp_path, "run").acquire()
    # this pid with another start time: the pid was reused after its owner ended
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "process_start": "1"}))
    with caplog.at_level(logging.WARNING, logger="lmlab"), RunLock(tmp_path, "run"):
        assert json.loads(lock.read_text())["process_start"] != "1"
    assert "taking over the lock of pid" in caplog.text and not lock.exists()
    lock.write_text("{")  # a lock cut short: in use while fresh (its owner may be writing it), stale after
    with pytest.raises(InputError, match="in use by another training: a training whose lock is being written"):
        RunLock(tmp_path, "run").acquire()
    os.utime(lock, (time.time() - 60,) * 2)
    with RunLock(tmp_path, "run"):
        pass
    assert not lock.exists()


def test_sigterm_during_fit_releases_the_lock(make_cfg, tmp_path):
    with pytest.raises(SystemExit) as stop:
        train(make_cfg(*QUICK, "trainer.max_steps=4", "+callbacks.stop._target_=helpers.SigtermAtStep",
                       "+callbacks.stop.step=2"))
    assert stop.value.code == 143 and not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.parametrize("under", [False, True])
def test_a_run_or_sweep_directory_that_is_a_file_is_one_line(train_command, tmp_path, under):
    file = tmp_path / "notes.txt"
    file.write_text("not a directory")
    path = file / "run" if under else file
    what = f"is under {file}, which is a file" if under else "is a file"
    for multirun in (False, True):
        proc = subprocess.run(train_command("optimizer.lr=1e-3", run_dir=path, multirun=multirun), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={**os.environ, **SUBPROCESS_ENV})
        key = f"hydra.sweep.dir={path}" if multirun else f"hydra.run.dir={path}"
        assert refused(proc) == f"Error: {key}: {what}, not a directory; choose another directory"
    assert file.read_text() == "not a directory"


def test_auto_restarts_the_same_run_that_left_no_checkpoint_and_refuses_another(make_cfg, tmp_path, caplog):
    """ckpt_path=auto resubmits a command: a run stopped before its first checkpoint starts over (the same
    config), a directory holding a run of another config is refused."""
    run_dir = tmp_path / "run"
    train(make_cfg(*QUICK, run_dir=run_dir))
    assert not (run_dir / "checkpoints").exists()
    with pytest.raises(InputError, match=r"holds a run of another config with no checkpoints/last.ckpt to resume; "
                                         r"ckpt_path=auto restarts only the same run"):
        train(make_cfg(*QUICK, "optimizer.lr=1e-2", "ckpt_path=auto", run_dir=run_dir))
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        train(make_cfg(*QUICK, "ckpt_path=auto", run_dir=run_dir))
    assert "the run stopped before its first checkpoint (no checkpoints/last.ckpt); starting it over" in caplog.text
    assert rows_with(run_dir, "train/loss") == 2  # the restart's steps, each once


def test_other_ranks_share_the_directory_of_rank_zero(tmp_path):
    """Ranks > 0 of a distributed run (re-launched commands) find rank 0's checkpoint and claim nothing."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    assert resume_checkpoint(None, tmp_path, claim=False) is None
    with RunLock(tmp_path, "run", owner=False):
        pass
    assert (tmp_path / LOCK_FILE).exists()  # rank 0's, untouched


@pytest.mark.slow
def test_a_sweep_rerun_restarts_its_failed_jobs_in_their_own_directories(run_train_py, tmp_path):
    """A job that failed mid-training before its first checkpoint left a run in its directory: the rerun of the
    sweep restarts it (ckpt_path=auto, the same config) instead of refusing it."""
    sweep_dir = tmp_path / "sweep"
    args = ("callbacks=none", "+callbacks.fail._target_=helpers.RaiseAtStep", "+callbacks.fail.step=100,1",
            "trainer.max_steps=3")
    run_train_py(*args, run_dir=sweep_dir, multirun=True, returncode=1)
    assert (sweep_dir / "1" / "run.json").is_file() and not (sweep_dir / "1" / "checkpoints").exists()
    proc = run_train_py(*args, run_dir=sweep_dir, multirun=True, returncode=1)
    status = json.loads((sweep_dir / "1" / "status.json").read_text())
    assert status["error"] == "RuntimeError: deliberate failure at step 1", proc.stderr[-3000:]
    assert "starting it over" in (sweep_dir / "1" / "train.log").read_text()
