"""Every shipped config file composes and runs on CPU, and leaves what such a run must leave.

Most options run a fast_dev_run (one training and one validation batch). Lightning switches loggers
off under fast_dev_run, so the logger options (and debug=overfit, which fast_dev_run would replace)
run two real optimizer steps instead and are checked by the files their loggers wrote.
"""

import json
import math
from pathlib import Path

import pytest
from helpers import column, finished_wandb_records, read_metrics
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from transformers import AutoTokenizer

from lmlab.cli import CONF_DIR
from lmlab.cli.train import train

CONF = Path(CONF_DIR)
# composed elsewhere or structural: hydra/paths are used by every run
SKIP_GROUPS = {"hydra", "paths"}
NEEDS_CUDA = {("trainer", "gpu"), ("trainer", "fsdp")}
NEEDS_TEACHER = {("loss", "distill"), ("loss", "kl"), ("loss", "mse"), ("experiment", "distill_draft")}
# groups whose options need inputs of their own to run on the tiny corpus
EXTRA = {
    ("model", "hf"): ["model.hidden_size=32", "model.per_architecture.llama.intermediate_size=64",
                      "model.num_hidden_layers=1", "model.num_attention_heads=2",
                      "model.per_architecture.llama.num_key_value_heads=1", "model.max_position_embeddings=64"],
    ("trainer", "ddp_spawn"): ["trainer.accelerator=cpu"],
    ("data", "code_pairs"): ["loss=contrastive"],  # pair batches need the contrastive loss
    ("task", "pair_embedding"): ["loss=contrastive"],
}
# two optimizer steps, validation after the second
SHORT_RUN = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
             "sched.warmup_steps=1"]


def options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in SKIP_GROUPS):
        for f in sorted(group_dir.glob("*.yaml")):
            marks = [pytest.mark.gpu] if (group_dir.name, f.stem) in NEEDS_CUDA else []
            if (group_dir.name, f.stem) == ("trainer", "ddp_spawn"):
                marks.append(pytest.mark.ddp)
            yield pytest.param(group_dir.name, f.stem, marks=marks, id=f"{group_dir.name}={f.stem}")


@pytest.mark.parametrize("group,option", options())
def test_config_option_runs(make_cfg, group, option, hf_dataset_file, corpus_dir, request):
    if (group, option) == ("trainer", "ddp"):
        pytest.skip("strategy=ddp re-executes sys.argv; run as a subprocess in test_train.py")
    extra = list(EXTRA.get((group, option), []))
    if (group, option) in NEEDS_TEACHER:
        extra.append(f"loss.teacher={request.getfixturevalue('trained_run')}")
    if (group, option) == ("decoding", "speculative"):
        extra.append(f"decoding.draft={request.getfixturevalue('trained_run')}")
    if (group, option) == ("data", "text_files"):
        extra.append(f"data.corpus.paths={corpus_dir}")
    if (group, option) in (("loss", "contrastive"), ("experiment", "code_search"), ("task", "pair_embedding")):
        extra += ["data=code_pairs", "data.corpus._target_=lmlab.data.TextFiles",
                  f"+data.corpus.paths={corpus_dir}"]
    if (group, option) == ("data", "hf_dataset"):
        extra += ["data.corpus.path=json", f"data.corpus.data_files={hf_dataset_file}"]
    writes = group == "logger" or (group, option) == ("debug", "overfit")
    if writes:
        extra += SHORT_RUN
    elif group != "debug":
        extra.append("debug=fast")
    cfg = make_cfg(f"{group}={option}", *extra)
    metric = train(cfg)

    run_dir = Path(cfg.paths.output_dir)
    assert metric is not None and math.isfinite(metric), f"no finite {cfg.optimized_metric} returned"
    # self-describing: the resolved config, the command's overrides, a tokenizer that loads
    assert (run_dir / "config.yaml").is_file()
    assert f"{group}={option}" in json.loads((run_dir / "run.json").read_text())["overrides"]
    assert len(AutoTokenizer.from_pretrained(run_dir / "tokenizer")) <= cfg.data.vocab_size
    if not writes:  # fast_dev_run: no loggers
        assert not (run_dir / "metrics.csv").exists()
        return
    if option == "none":
        assert not (run_dir / "metrics.csv").exists() and not (run_dir / "wandb").exists()
        assert not (run_dir / "tensorboard").exists()
        return
    metrics = read_metrics(run_dir)
    assert list(metrics["train/loss"]) == [0, 1] and list(metrics["val/loss"]) == [1]
    assert column(metrics, "val/loss") == [pytest.approx(metric)]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    if option == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
        scalars = EventAccumulator(str(events)).Reload()
        assert [e.step for e in scalars.Scalars("train/loss")] == [0, 1]
        assert [e.value for e in scalars.Scalars("val/loss")] == [pytest.approx(metric)]
    if option == "wandb":
        (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        logged = {}
        for record in finished_wandb_records(run_file):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                for key in ("train/loss", "val/loss"):
                    if key in items:
                        logged.setdefault(key, []).append(float(items[key]))
        assert len(logged["train/loss"]) == 2 and logged["val/loss"] == [pytest.approx(metric)]


def test_unknown_group_option_lists_the_choices():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException, match="adamw"):
            compose("train", overrides=["optimizer=adamx"])


@pytest.fixture
def hf_dataset_file(tmp_path, corpus_dir) -> Path:
    """A JSON-lines dataset of real source files, read through Hugging Face `datasets`."""
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for file in sorted(corpus_dir.glob("*.py")):
            f.write(json.dumps({"text": file.read_text()}) + "\n")
    return path
