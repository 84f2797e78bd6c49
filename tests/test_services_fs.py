"""External services and the filesystem behind one line: W&B without a network or a key decides within seconds
(offline with one warning, or one error line); a path the OS refuses (through a regular file, an existing file
as the run directory) is one line naming the user's path; a corpus entry that is not a file and a hub dataset
not available offline are named."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lmlab.cli.quantize import main as quantize_main
from lmlab.cli.report import main as report_main
from lmlab.data import TextFiles
from lmlab.data.corpus import HFDataset
from lmlab.errors import ArgumentError, InputError
from lmlab.loggers import wandb_start_mode

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once (no network needed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return monkeypatch


def test_wandb_online_without_a_key_or_a_server_is_one_line(no_wandb_env):
    no_wandb_env.setenv("WANDB_MODE", "online")
    with pytest.raises(ArgumentError, match="WANDB_MODE=online needs a W&B API key and none is configured"):
        wandb_start_mode("auto")
    no_wandb_env.setenv("WANDB_API_KEY", FAKE_KEY)
    no_wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ArgumentError, match=r"needs the W&B server, and 127\.0\.0\.1:\d+ cannot be reached"):
        wandb_start_mode("online")
    no_wandb_env.delenv("WANDB_MODE")
    assert wandb_start_mode("auto") == "offline"  # a key, no server: auto falls back
    no_wandb_env.setenv("WANDB_MODE", "bogus")
    with pytest.raises(ArgumentError, match="WANDB_MODE='bogus' is not a W&B mode"):
        wandb_start_mode("auto")


def test_train_py_with_a_fake_key_and_no_server_logs_offline_in_seconds(train_command, tmp_path):
    """A real run: formerly ~106 s of retries and a CommError; now one warning, offline, and it trains."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env |= {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
            "NETRC": str(tmp_path / "none")}
    start = time.monotonic()
    proc = subprocess.run(train_command("logger=wandb", "trainer.max_steps=3", run_dir=tmp_path / "run"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "lmlab.loggers" in line]
    assert len(lines) == 1 and "cannot be reached" in lines[0] and lines[0].endswith("logging offline (upload "
                                                                                     "later with `wandb sync`)")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert time.monotonic() - start < 120  # the whole run; the W&B decision itself is one refused connection


def run_cli(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline"})


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("Error:") or "Traceback" in line]



def test_train_py_with_a_server_that_answers_errors_logs_offline(train_command, tmp_path):
    """A server that answers but is no W&B (here Python's http.server: 501 to every POST): wandb.init fails after
    the probe succeeded; the run falls back offline with one warning instead of a traceback."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env |= {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "NETRC": str(tmp_path / "none")}
    try:
        proc = subprocess.run(train_command("logger=wandb", "trainer.max_steps=3", run_dir=tmp_path / "run"),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "lmlab.loggers" in line]
    assert len(lines) == 1 and "W&B did not start an online run" in lines[0] and len(lines[0]) < 400, lines
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))

@pytest.mark.parametrize("where", ["existing file", "under a file", "cache under a file"])
def test_train_py_names_a_path_the_os_refuses_in_one_line(train_command, tmp_path, where):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    run_dir = blocker if where == "existing file" else tmp_path / "run"
    overrides = {"existing file": [], "under a file": [f"hydra.run.dir={blocker / 'run'}"],
                 "cache under a file": [f"paths.cache_dir={blocker / 'cache'}"]}[where]
    proc = run_cli(train_command(*overrides, run_dir=run_dir), tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = error_lines(proc)
    assert str(blocker) in line and any(reason in line for reason in ("a file is in the way", "Not a directory",
                                                                     "is a file, not a directory")), line
    assert blocker.read_text() == "not a folder"


def test_quantize_and_report_name_out_under_a_file(trained_run, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for main, out in ((quantize_main, "q.safetensors"), (report_main, "r.html")):
        args = [str(trained_run), "--out", str(blocker / out)] + (["--mode", "int8"] if main is quantize_main else [])
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message == f"Error: --out={blocker / out}: cannot be written ({blocker}: Not a directory)"


def test_corpus_entries_that_are_not_files_are_named(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f():\n    return 1\n")
    (corpus / "gone.py").symlink_to(tmp_path / "nowhere")
    os.mkfifo(corpus / "pipe.py")  # reading it would block forever
    with pytest.raises(ArgumentError) as error:
        TextFiles(str(corpus))
    message = str(error.value)
    assert f"{corpus / 'gone.py'} is a dangling symlink (to {tmp_path / 'nowhere'})" in message
    assert f"{corpus / 'pipe.py'} is a FIFO, not a file" in message and "2 of 3 entries" in message


def test_a_hub_dataset_not_available_offline_is_one_line(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match=r"HFDataset\('no-such/dataset-xyz'.*cannot be loaded: .*local Hugging") as e:
        HFDataset("no-such/dataset-xyz").load()
    assert "\n" not in str(e.value)
