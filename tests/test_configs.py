"""Every shipped config file composes and runs a fast_dev_run on CPU."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from lmlab.cli import CONF_DIR
from lmlab.cli.train import train

CONF = Path(CONF_DIR)
# composed elsewhere or structural: hydra/paths are used by every run
SKIP_GROUPS = {"hydra", "paths"}
NEEDS_CUDA = {("trainer", "gpu"), ("trainer", "fsdp")}
NEEDS_TEACHER = {("loss", "distill"), ("loss", "kl"), ("loss", "mse"), ("experiment", "distill_draft")}
# groups whose options need inputs of their own to run on the tiny corpus
EXTRA = {
    ("model", "hf"): ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
                      "model.num_attention_heads=2", "model.num_key_value_heads=1",
                      "model.max_position_embeddings=64"],
    ("trainer", "ddp_spawn"): ["trainer.accelerator=cpu"],
    ("data", "code_pairs"): ["loss=contrastive"],  # pair batches need the contrastive loss
}


def options():
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in SKIP_GROUPS):
        for f in sorted(group_dir.glob("*.yaml")):
            marks = [pytest.mark.gpu] if (group_dir.name, f.stem) in NEEDS_CUDA else []
            if (group_dir.name, f.stem) == ("trainer", "ddp_spawn"):
                marks.append(pytest.mark.ddp)
            yield pytest.param(group_dir.name, f.stem, marks=marks, id=f"{group_dir.name}={f.stem}")


@pytest.mark.parametrize("group,option", options())
def test_config_option_runs_fast_dev_run(make_cfg, group, option, hf_dataset_file, corpus_dir, request):
    if (group, option) == ("trainer", "ddp"):
        pytest.skip("strategy=ddp re-executes sys.argv; run as a subprocess in test_train.py")
    extra = list(EXTRA.get((group, option), []))
    if (group, option) in NEEDS_TEACHER:
        extra.append(f"loss.teacher={request.getfixturevalue('trained_run')}")
    if (group, option) == ("decoding", "speculative"):
        extra.append(f"decoding.draft={request.getfixturevalue('trained_run')}")
    if (group, option) == ("data", "text_files"):
        extra.append(f"data.corpus.paths={corpus_dir}")
    if (group, option) in (("loss", "contrastive"), ("experiment", "code_search")):  # pairs of the tiny corpus
        extra += ["data=code_pairs", "data.corpus._target_=lmlab.data.TextFiles",
                  f"+data.corpus.paths={corpus_dir}"]
    if (group, option) == ("data", "hf_dataset"):
        extra += ["data.corpus.path=json", f"data.corpus.data_files={hf_dataset_file}"]
    cfg = make_cfg(f"{group}={option}", *extra, "debug=fast")
    train(cfg)


def test_unknown_group_option_lists_the_choices():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException, match="adamw"):
            compose("train", overrides=["optimizer=adamx"])


@pytest.fixture
def hf_dataset_file(tmp_path, corpus_dir) -> Path:
    """A JSON-lines dataset of real source files, read through Hugging Face `datasets`."""
    import json

    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for file in sorted(corpus_dir.glob("*.py")):
            f.write(json.dumps({"text": file.read_text()}) + "\n")
    return path


