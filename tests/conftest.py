"""Tiny, real configurations: a few stdlib files as corpus, a 1-layer GPT, CPU, seconds per run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import helpers
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lmlab.cli import CONF_DIR, compose

ROOT = Path(CONF_DIR).parent
# real source files of a few stdlib packages: ~60 documents, ~100k tokens
CORPUS_PACKAGES = ("json", "email", "http")


def pytest_collection_modifyitems(items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def own_wandb_service_per_process():
    """A W&B run inside the test process exports WANDB_SERVICE; a `python train.py` started later with
    this environment would join that process's service (and collide with its run ids) instead of
    starting its own. Tear the service down after the test that started it."""
    yield
    if "WANDB_SERVICE" in os.environ:
        import wandb

        wandb.teardown()


@pytest.fixture
def one_thread():
    """The test runs torch on one intra-op thread (see helpers.one_thread)."""
    with helpers.one_thread():
        yield


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in CORPUS_PACKAGES:
        for f in sorted((stdlib / package).glob("*.py")):
            shutil.copy(f, out / f"{package}_{f.name}")
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_overrides(corpus_dir: Path, cache_dir: Path, *chosen: str) -> list[str]:
    """Overrides for a seconds-long run; a group the caller chooses (`group=option`) drops its own."""
    by_group = {
        "data": ["data=text_files", f"data.corpus.paths={corpus_dir}"],
        "model": ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64"],
        "trainer": ["trainer=cpu"],
        "logger": ["logger=csv"],
        # the default callbacks decode 4 prompts x 32 tokens at every validation: one short prompt does
        "callbacks": ["callbacks.decoding.num_prompts=1", "callbacks.decoding.max_new_tokens=4",
                      "callbacks.throughput.decode_tokens=4"],
    }
    chosen_groups = {o.split("=", 1)[0].lstrip("+~") for o in chosen if "=" in o and "." not in o.split("=")[0]}
    common = [
        "data.vocab_size=384", "data.block_size=32", "data.batch_size=8", f"paths.cache_dir={cache_dir}",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1", "sched.warmup_steps=2",
        "samples.num_prompts=1", "samples.max_new_tokens=4",
    ]
    picked = [o for group, overrides in by_group.items() if group not in chosen_groups for o in overrides]
    return picked + common + list(chosen)


def compose_train(corpus_dir: Path, cache_dir: Path, run_dir: Path, *overrides: str) -> DictConfig:
    """compose('train', tiny overrides + yours) with its run directory at run_dir, as Hydra would set it."""
    return compose("train", tiny_overrides(corpus_dir, cache_dir, *overrides), run_dir=run_dir)


@pytest.fixture
def make_cfg(corpus_dir, cache_dir, tmp_path):
    """compose_train with the run directory in tmp_path unless given."""
    yield lambda *overrides, run_dir=None: compose_train(corpus_dir, cache_dir, run_dir or tmp_path / "run",
                                                         *overrides)
    GlobalHydra.instance().clear()


@pytest.fixture
def generate_cfg():
    """compose('generate', overrides) as generate.py would (prompts quoted as its command line does)."""
    from lmlab.cli.generate import quote_prompt

    def compose_generate(*overrides: str) -> DictConfig:
        return compose("generate", [quote_prompt(o) for o in overrides], run_dir=".")

    yield compose_generate
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_run(corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """One short real run (30 steps) shared by tests that only read what it leaves behind."""
    from lmlab.cli.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_train(corpus_dir, cache_dir, run_dir, "trainer.max_steps=30", "trainer.val_check_interval=30",
                        "optimizer.lr=1e-2", "sched.warmup_steps=5"))
    GlobalHydra.instance().clear()
    return run_dir


SUBPROCESS_ENV = {"WANDB_MODE": "offline"}  # never reach for the network in tests


@pytest.fixture
def train_command(corpus_dir, cache_dir):
    """The argv of `python <script> <tiny overrides> <yours>` (script: train.py unless given)."""

    def command(*overrides: str, run_dir: Path, multirun: bool = False, script: list[str] | None = None):
        where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
        return [sys.executable, *(script or [str(ROOT / "train.py")]), *(["-m"] if multirun else []),
                *tiny_overrides(corpus_dir, cache_dir, where, *overrides)]

    return command


@pytest.fixture
def run_train_py(train_command, tmp_path):
    """`python train.py <tiny overrides> <yours>` as a user would type it; returns the completed process."""

    def run(*overrides: str, run_dir: Path | None = None, multirun: bool = False, timeout: int = 300,
            returncode: int = 0):
        cmd = train_command(*overrides, run_dir=run_dir or tmp_path / "run", multirun=multirun)
        # `helpers` callbacks are importable by the job
        python_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": python_path})
        assert proc.returncode == returncode, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc

    return run
