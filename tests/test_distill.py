"""Distillation against a teacher checkpoint trained in the test."""

import copy
import warnings
from pathlib import Path

import pytest
import torch
from helpers import SaveInitialWeights

from lmlab.checkpoint import load_checkpoint
from lmlab.cli.train import train
from lmlab.losses import kl_divergence


@pytest.fixture
def teacher_dir(trained_run) -> Path:
    return trained_run


def teacher_kl(student, teacher, tokens) -> float:
    with torch.no_grad():
        return kl_divergence(student(tokens).logits, teacher(tokens).logits).item()


def test_kl_distillation_moves_the_student_towards_the_teacher(make_cfg, teacher_dir, tmp_path):
    teacher, tokenizer, _ = load_checkpoint(teacher_dir)
    tokens = torch.tensor([tokenizer.encode("def loads(s, *, cls=None, object_hook=None):\n    return")])
    student_dir = tmp_path / "student"
    cfg = make_cfg("loss=kl", f"loss.teacher={teacher_dir}", "loss.temperature=1.0", "trainer.max_steps=30",
                   "trainer.val_check_interval=30", "optimizer.lr=1e-2", "sched.warmup_steps=5", "seed=7",
                   "+callbacks.initial._target_=helpers.SaveInitialWeights", run_dir=student_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the frozen teacher is not the student's
    state = torch.load(student_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all(key.startswith("model.") for key in state)  # the student's weights only
    student, _, _ = load_checkpoint(student_dir / "checkpoints" / "last.ckpt")
    untrained = copy.deepcopy(student)
    untrained.load_state_dict(torch.load(student_dir / SaveInitialWeights.FILE))  # the student as it started
    assert teacher_kl(student, teacher, tokens) < 0.5 * teacher_kl(untrained, teacher, tokens)


def test_missing_teacher_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(Exception, match="loss.teacher=.*does not exist"):  # wrapped by Hydra's instantiate
        train(make_cfg("loss=distill", f"loss.teacher={tmp_path / 'nowhere'}"))


def test_teacher_with_another_tokenizer_is_refused(make_cfg, teacher_dir):
    with pytest.raises(ValueError, match="different tokenizer"):
        train(make_cfg("loss=distill", f"loss.teacher={teacher_dir}", "data.vocab_size=320"))
