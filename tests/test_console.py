"""What a user sees in the console: the progress output for a terminal and for a log file, library
messages that are not the user's to act on, and the `lmlab` command installed without its checkout.
(`python train.py` with its output in a pipe is checked in test_train.py's end-to-end run.)"""

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar

from lmlab.callbacks.progress import LoggedMetricsRichBar, ProgressLines, progress_bar
from lmlab.cli import CONF_DIR
from lmlab.cli.quiet import silence_library_noise


def test_progress_is_the_rich_bar_on_a_terminal_and_plain_lines_in_a_pipe(monkeypatch):
    terminal_fd, program_fd = os.openpty()  # a real pseudo-terminal, as an interactive shell gives
    with open(program_fd, "w") as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        assert isinstance(progress_bar(refresh_rate=5), RichProgressBar)
    os.close(terminal_fd)
    read_fd, write_fd = os.pipe()  # what a log file, SLURM or CI gives
    with open(write_fd, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        lines = progress_bar(every_n_steps=3)
    os.close(read_fd)
    assert isinstance(lines, ProgressLines) and lines.every_n_steps == 3
    with pytest.raises(ValueError, match="^every_n_steps=0: must be null or an integer >= 1$"):
        ProgressLines(0)


@pytest.mark.parametrize("max_epochs,expected", [(-1, "Epoch 3"), (5, "Epoch 3/4")])
def test_rich_bar_names_the_epoch_without_a_negative_total(max_epochs, expected):
    bar = LoggedMetricsRichBar()
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=10, callbacks=[bar], logger=False, enable_checkpointing=False)
    bar.setup(trainer, None, "fit")
    assert bar._get_train_description(3).strip() == expected


def test_library_noise_is_silenced_by_message_and_origin_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        for module, message in (
            ("lightning.pytorch.utilities._pytree", "`isinstance(treespec, LeafSpec)` is deprecated, use ..."),
            ("lightning.pytorch.utilities._pytree", "another deprecation from the same module"),
            ("somewhere.else", "`isinstance(treespec, LeafSpec)` is deprecated, use ..."),
        ):
            warnings.warn_explicit(message, FutureWarning, "x.py", 1, module=module)
    assert [(w.message.args[0][:10]) for w in caught] == ["another de", "`isinstanc"]  # only the first is dropped
    # a handler on the logger itself, enabled: an in-process Hydra app earlier in the session may have
    # configured logging with disable_existing_loggers
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    level, disabled = rank_zero.level, rank_zero.disabled
    rank_zero.addHandler(handler)
    rank_zero.setLevel(logging.INFO)
    rank_zero.disabled = False
    try:
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero.info("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)")
        rank_zero.info("GPU available: False, used: False")
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.setLevel(level)
        rank_zero.disabled = disabled
    assert seen == ["GPU available: False, used: False"]


def test_lmlab_command_installed_without_its_checkout_names_the_fix(tmp_path):
    """A non-editable install puts the package alone in site-packages, without conf/ anywhere above it."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(CONF_DIR).parent / "src" / "lmlab", site / "lmlab")
    script = "import sys; from lmlab.cli.main import main; sys.exit(main())"  # what pip's `lmlab` script runs
    proc = subprocess.run([sys.executable, "-c", script, "train"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"no configs at {tmp_path / 'conf'}" in proc.stderr and "pip install -e ." in proc.stderr


@pytest.mark.parametrize("callbacks", ["none", "model_checkpoint"])
def test_a_run_without_a_progress_callback_still_shows_lmlab_progress(make_cfg, capsys, callbacks):
    """Lightning would add its default bar (`Epoch 0/-2` for a step budget); the train CLI adds lmlab's."""
    from lmlab.cli.train import train

    train(make_cfg(f"callbacks={callbacks}", "trainer.max_steps=2", "sched.warmup_steps=1",
                   "trainer.log_every_n_steps=1", "samples.num_prompts=0"))
    out = capsys.readouterr().out
    assert "step 2/2 | loss" in out and "/-2" not in out
