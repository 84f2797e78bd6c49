"""The training step stays on the device: no host reads on non-logging steps, no graph breaks."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from lmlab.cli.train import train


def test_default_run_reads_nothing_to_the_host_between_logging_steps(make_cfg):
    """The default callbacks (progress bar, stability, throughput, checkpoints, summary) and the CSV
    logger: on a GPU every host read is a sync of the device's queue, so only logging steps may have one."""
    from helpers import HostReads

    every = 4
    cfg = make_cfg("trainer.max_steps=10", f"trainer.log_every_n_steps={every}", "trainer.val_check_interval=10",
                   "compile=false")
    with open_dict(cfg):
        cfg.callbacks = {"host_reads": {"_target_": "helpers.HostReads"}, **cfg.callbacks}
    assert "progress_bar" in cfg.callbacks and "stability" in cfg.callbacks and "throughput" in cfg.callbacks
    train(cfg)
    assert sorted(HostReads.steps) == list(range(10))
    logging_steps = {step for step in HostReads.steps if (step + 1) % every == 0}
    assert any(HostReads.steps[s] for s in logging_steps)  # the counter sees the reads that are allowed
    # step 0 also measures decode speed and sets up the callbacks' state; after step 9 come validation and the end
    reads = {step: ops for step, ops in HostReads.steps.items() if 0 < step < 9 and step not in logging_steps and ops}
    assert not reads, f"host reads on non-logging steps: {reads}"


@pytest.mark.parametrize("model", [
    ("gpt_tiny", "model.n_layer=2"),  # GPT-2 style; the depth only repeats the block (the slow suite: all of it)
    ("llama_tiny", "model.n_layer=2"),  # RoPE, RMSNorm, SwiGLU, grouped-query attention
    pytest.param(("gpt_small",), marks=pytest.mark.slow),
], ids=lambda m: m[0])
def test_shipped_models_compile_without_graph_breaks(make_cfg, model):
    """What `compile=true` compiles (the model's forward, training mode), traced by dynamo as one graph."""
    cfg = make_cfg(f"model={model[0]}", *model[1:])
    with torch.device("meta"):  # the graph depends on the code path, not on the weights
        module = instantiate(cfg.model).train()
        ids = torch.zeros(2, 16, dtype=torch.long)
    explanation = torch._dynamo.explain(module.forward)(ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.gpu
def test_gpu_training_step_never_synchronizes_between_logging_steps(make_cfg):
    """bf16, the default callbacks, pinned batches copied without blocking."""
    cfg = make_cfg("trainer=gpu", "trainer.max_steps=12", "trainer.log_every_n_steps=4",
                   "trainer.val_check_interval=12")
    with open_dict(cfg):
        cfg.callbacks = {"no_sync": {"_target_": "helpers.NoSyncBetweenLogs"}, **cfg.callbacks}
    train(cfg)


@pytest.mark.gpu
def test_gpu_batches_come_from_pinned_memory(make_cfg):
    datamodule = instantiate(make_cfg().data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.train_dataloader().pin_memory and next(iter(datamodule.train_dataloader())).is_pinned()
