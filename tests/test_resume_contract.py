"""The resume contract (lmlab.config.resume): a resume refuses, in one line naming each change, what would make the
run something else (its data, tokenizer, model, optimizer class, batch), before anything is written; and it follows
what it can (the horizon, the LR and the schedule, optimizer settings) from the resumed step, saying so."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, tiny_overrides
from helpers import read_metrics, rows_with
from test_run_ownership import refused, snapshot

from lmlab.checkpoint import read_checkpoint
from lmlab.cli.run_dir import held_run
from lmlab.cli.run_lock import LOCK_FILE
from lmlab.cli.train import train
from lmlab.config.resume import WORLD, settings_changes
from lmlab.errors import InputError

# what conftest's trained_run was trained with: a resume of it names these unless it changes them
TRAINED = ("trainer.max_steps=30", "trainer.val_check_interval=30", "optimizer.lr=1e-2", "sched.warmup_steps=5")
PREFIX = r"ckpt_path=.*last\.ckpt: this config changes what the checkpoint at step 30 was trained with " \
         r"\(checkpoint -> config\): "


def resume_refused(make_cfg, tmp_path, checkpoint, *overrides: str) -> str:
    """The refusal of resuming ``checkpoint`` into a new directory, which it leaves holding nothing."""
    with pytest.raises(InputError) as error:
        train(make_cfg(*TRAINED, f"ckpt_path={checkpoint}", *overrides))
    run_dir = tmp_path / "run"
    assert held_run(run_dir) == [] and not (run_dir / LOCK_FILE).exists()
    return str(error.value)


@pytest.fixture(scope="module")
def other_corpus(corpus_dir, tmp_path_factory) -> Path:
    """Another corpus: a third of the same files."""
    folder = tmp_path_factory.mktemp("other_corpus")
    for path in sorted(corpus_dir.iterdir())[::3]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("overrides, changes", [
    (["optimizer=sgd"], r"optimizer._target_ 'lmlab.optim.AdamW' -> 'lmlab.optim.SGD'; resume with"),
    (["optimizer=lion"], r"optimizer._target_ 'lmlab.optim.AdamW' -> 'lmlab.optim.Lion'; resume with"),
    (["optimizer=torch_adamw"], r"optimizer._target_ 'lmlab.optim.AdamW' -> 'lmlab.optim.grouped'; optimizer.cls "
                                r"null -> 'torch.optim.AdamW'; resume"),
    (["data.batch_size=4"], r"data.batch_size 8 -> 4 \(moves the data position\); data.global_batch_size 8 -> 4; "),
    (["data.global_batch_size=16"], r"data.global_batch_size 8 -> 16; resume"),
    (["data.block_size=16"], r"data.block_size 32 -> 16; resume"),
    (["data.val_fraction=0.1", "data.dedup=exact", "seed=7"],
     r"data.val_fraction 0.05 -> 0.1; data.dedup 'near' -> 'exact'; data.seed 1234 -> 7; resume"),
    (["model.n_embd=64"], r"model.n_embd 32 -> 64; resume"),
    (["data.vocab_size=400"], r"model.vocab_size 384 -> 400; data.vocab_size 384 -> 400; resume"),
    (["trainer.max_steps=10"], r"trainer.max_steps=10 is before the checkpoint's step 30; resume"),
])
def test_a_resume_that_changes_what_was_trained_is_refused_naming_each_change(make_cfg, trained_run, tmp_path,
                                                                              overrides, changes):
    message = resume_refused(make_cfg, tmp_path, trained_run, *overrides)
    assert re.match(PREFIX + changes, message), message


def test_a_resume_with_another_corpus_is_one_line_and_leaves_the_run_as_it_was(trained_run, corpus_dir, cache_dir,
                                                                               other_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = snapshot(run_dir)
    overrides = tiny_overrides(corpus_dir, cache_dir, f"hydra.run.dir={run_dir}", *TRAINED, "ckpt_path=last",
                               f"data.corpus.paths={other_corpus}")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **SUBPROCESS_ENV})
    line = refused(proc, alone=False)
    n_files, n_other = len(list(corpus_dir.iterdir())), len(list(other_corpus.iterdir()))
    assert re.fullmatch(r"Error: ckpt_path=.*: this config changes what the checkpoint at step 30 was trained with "
                        rf"\(checkpoint -> config\): data.corpus 'TextFiles\({n_files} files\) #[0-9a-f]{{16}}' -> "
                        rf"'TextFiles\({n_other} files\) #[0-9a-f]{{16}}'; resume with the settings the checkpoint "
                        "was trained with, or start a new run in a new directory", line), line
    after = snapshot(run_dir)  # every file of the run as it was; new: Hydra's record of the command, made before
    assert {name: after[name] for name in before} == before  # lmlab runs (its .hydra/ files and job log)
    assert {name for name in after if name not in before} == {".hydra/config.yaml", ".hydra/hydra.yaml",
                                                                ".hydra/overrides.yaml", "train.log"}


def without_run_settings(checkpoint: Path, out: Path) -> Path:
    """A checkpoint as lmlab wrote it before it recorded its run settings."""
    state = torch.load(checkpoint, weights_only=True)
    del state["lmlab"]["run_settings"]
    torch.save(state, out)
    return out


def test_an_older_checkpoint_is_checked_as_far_as_it_can_be(make_cfg, trained_run, tmp_path, caplog):
    old = without_run_settings(trained_run / "checkpoints" / "last.ckpt", tmp_path / "old.ckpt")
    for optimizer, settings in (("lion", "betas, lr, name, weight_decay"),
                                ("sgd", "dampening, lr, momentum, name, nesterov, weight_decay")):
        message = resume_refused(make_cfg, tmp_path, old, f"optimizer={optimizer}")
        assert message.endswith(f"optimizer state of an optimizer with settings betas, decoupled_weight_decay, eps, "
                                f"lr, name, weight_decay -> {optimizer.title()[:4] if optimizer == 'lion' else 'SGD'} "
                                f"(settings {settings}); resume with the settings the checkpoint was trained with, or "
                                "start a new run in a new directory"), message
    message = resume_refused(make_cfg, tmp_path, old, "data.vocab_size=380", "model.vocab_size=384")
    assert re.search(r"data.tokenizer #[0-9a-f]{16} -> #[0-9a-f]{16} \(the weights index the checkpoint's token "
                     r"ids\)", message)
    with caplog.at_level(logging.WARNING, logger="lmlab"):  # what cannot be checked is said; nothing left to train
        train(make_cfg(*TRAINED, f"ckpt_path={old}", "samples.num_prompts=0"))
    assert "trainer.max_steps=30 is the checkpoint's step: nothing is left to train; (written before checkpoints " \
           "recorded their run settings: the data, batch and schedule settings could not be compared)" in caplog.text


def test_checkpoints_that_cannot_be_resumed_are_named(make_cfg, trained_run, tmp_path):
    state = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = tmp_path / "weights.ckpt"
    torch.save({k: v for k, v in state.items() if k not in ("optimizer_states", "loops")}, weights)
    assert "holds weights only (no optimizer or loop state), so it cannot be resumed" in \
        resume_refused(make_cfg, tmp_path, weights)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({k: v for k, v in state.items() if k != "lmlab"}, foreign)
    assert "was not written by lmlab (no 'lmlab' entry), so it cannot be resumed" in \
        resume_refused(make_cfg, tmp_path, foreign)


def cosine(s: int, warmup: int, total: int, floor: float = 0.1) -> float:
    if s < warmup:
        return (s + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (total - warmup))))


def test_a_longer_horizon_and_new_optimizer_settings_are_followed_from_the_resumed_step(make_cfg, tmp_path, caplog):
    """The LR after the resume is this config's schedule (cosine over 12 steps from the new base LR), not the
    checkpoint's (which ended at step 6), and weight decay is this config's."""
    run_dir = tmp_path / "run"
    train(make_cfg("callbacks=model_checkpoint", "samples.num_prompts=0", run_dir=run_dir))  # 6 steps
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        train(make_cfg("callbacks=model_checkpoint", "samples.num_prompts=0", "ckpt_path=last", "trainer.max_steps=12",
                       "optimizer.lr=1e-3", "optimizer.weight_decay=0.0", run_dir=run_dir))
    changes = ["optimizer.lr 0.003 -> 0.001", "optimizer.weight_decay 0.1 -> 0.0", "sched.total_steps 6 -> 12",
               "trainer.max_steps 6 -> 12"]
    assert "resuming at step 6 with changes this config makes (checkpoint -> config), followed from that step (the " \
           f"LR: this config's schedule there): {'; '.join(changes)}" in caplog.text
    assert json.loads((run_dir / "run.json").read_text())["starts"][-1]["changes"] == changes
    lrs = read_metrics(run_dir)["train/lr"]
    assert sorted(lrs) == list(range(12)) and rows_with(run_dir, "train/lr") == 12
    for step in range(6):
        assert lrs[step] == pytest.approx(3e-3 * cosine(step, 2, 6), rel=1e-6)
    for step in range(6, 12):
        assert lrs[step] == pytest.approx(1e-3 * cosine(step, 2, 12), rel=1e-6)
    groups = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["optimizer_states"][0]["param_groups"]
    assert [group["weight_decay"] for group in groups] == [0.0, 0.0]


def test_the_batch_may_be_spread_over_other_devices_when_the_data_order_stays():
    recorded = {"data.batch_size": 16, WORLD: 1, "data.global_batch_size": 32}
    same = {"data.batch_size": 8, WORLD: 2, "data.global_batch_size": 32}
    assert settings_changes(recorded, same, True) == (
        [], ["data.batch_size 16 -> 8", f"{WORLD} 1 -> 2"])
    more = {"data.batch_size": 16, WORLD: 2, "data.global_batch_size": 32}
    assert settings_changes(recorded, more, True)[0] == [f"{WORLD} 1 -> 2 (moves the data position)"]
    schedule = {"sched._target_": "lmlab.optim.WSD"}
    assert settings_changes({"sched._target_": "lmlab.optim.WarmupCosine"}, schedule, True)[1] == [
        "sched._target_ 'lmlab.optim.WarmupCosine' -> 'lmlab.optim.WSD'"]
    assert settings_changes({"sched._target_": "lmlab.optim.WarmupCosine"}, schedule, False)[0] == [
        "sched._target_ 'lmlab.optim.WarmupCosine' -> 'lmlab.optim.WSD'"]
