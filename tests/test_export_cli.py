"""`lmlab export` and `lmlab eval` on real checkpoints: the folder transformers loads, one-line refusals (exit
status 2) that leave no folder behind, and lm-eval's perplexity next to lmlab's on a run's held-out documents."""

from __future__ import annotations

import copy
import math
import re

import helpers
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from lmlab.checkpoint import load_checkpoint
from lmlab.cli.eval import main as eval_main
from lmlab.cli.export import main as export_main
from lmlab.cli.main import main
from lmlab.data import LMDataModule, TextFiles
from lmlab.models import GPT
from lmlab.quantization import quantize, save_quantized
from lmlab.spec import model_spec, tokenizer_spec

TINY = dict(block_size=32, n_layer=1, n_head=2, n_embd=32)


@pytest.fixture(autouse=True)
def one_thread():
    with helpers.one_thread():
        yield


def write_checkpoint(path, model, tokenizer):
    """A checkpoint as LitLM writes it: the model's spec and tokenizer under "lmlab", weights under "model."."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"lmlab": {"format_version": 1, "model": model_spec(model), "tokenizer": tokenizer_spec(tokenizer)},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def run(corpus_dir, cache_dir, tmp_path_factory):
    """A run directory: config.yaml with its data node, checkpoints/best.ckpt of a GPT-2-style model, and (for
    refusals) a checkpoint of a model no Hugging Face class computes and a quantized one."""
    data = {"_target_": "lmlab.data.LMDataModule", "corpus": {"_target_": "lmlab.data.TextFiles",
            "paths": str(corpus_dir)}, "vocab_size": 384, "block_size": 16, "batch_size": 4, "val_fraction": 0.2,
            "cache_dir": str(cache_dir)}
    datamodule = LMDataModule(TextFiles(str(corpus_dir)), **{k: v for k, v in data.items() if k not in
                                                              ("_target_", "corpus")})
    datamodule.prepare_data()
    tokenizer = datamodule.tokenizer
    folder = tmp_path_factory.mktemp("run")
    OmegaConf.save({"data": data}, folder / "config.yaml")
    torch.manual_seed(0)
    model = GPT(vocab_size=384, **TINY)
    write_checkpoint(folder / "checkpoints" / "best.ckpt", model, tokenizer)
    write_checkpoint(folder / "other" / "rmsnorm.ckpt", GPT(vocab_size=384, norm="rmsnorm", **TINY), tokenizer)
    save_quantized(quantize(copy.deepcopy(model), "int8"), folder / "other" / "int8.safetensors", tokenizer)
    return folder


def test_lmlab_export_writes_a_folder_transformers_loads(run, tmp_path, capsys):
    out = export_main([str(run), "--format", "hf", "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert out == tmp_path / "hf" and "wrote" in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.dtype == torch.bfloat16


@pytest.mark.parametrize("case, error", [
    ("no checkpoint", r"checkpoint=\S+: a run directory, but it has no checkpoints/best.ckpt"),
    ("non-empty out", r"--out=\S+: exists and is not empty"),
    ("unwritable out", r"--out=\S+: cannot be written \(\S+: Not a directory\)"),
    ("unmappable", r"checkpoint=\S+rmsnorm.ckpt: position='learned', norm='rmsnorm': no Hugging Face class"),
    ("quantized", r"checkpoint=\S+int8.safetensors: a quantized model \(int8\)"),
])
def test_lmlab_export_bad_input_is_one_line_and_leaves_no_folder(case, error, run, tmp_path, capsys):
    source, out = str(run), tmp_path / "out"
    if case == "no checkpoint":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif case == "non-empty out":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "unwritable out":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"
    elif case == "unmappable":
        source = str(run / "other" / "rmsnorm.ckpt")
    elif case == "quantized":
        source = str(run / "other" / "int8.safetensors")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["export", source, "--format", "hf", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and re.search(error, err) and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, no hidden staging folder
    if case == "non-empty out":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_lmlab_eval_reports_lm_eval_next_to_lmlab_on_held_out_documents(run, tmp_path, capsys):
    figures = eval_main([str(run), "--documents", "3", "--val-batches", "1", "--hf-out", str(tmp_path / "hf")])
    theirs, ours = figures["lm_eval"]["lmlab_val"], figures["lmlab"]
    assert theirs["sample_len"] == 3 and ours.tokens > 3 * TINY["block_size"]  # rolling windows were needed
    assert theirs["byte_perplexity,none"] == pytest.approx(ours.perplexity("bytes"), rel=1e-5)
    # untrained: every perplexity is near the vocabulary size per token, val/ppl (packed blocks) too
    assert 0.5 * 384 < ours.perplexity("tokens") < 2 * 384 and 0.5 * 384 < figures["val_ppl"] < 2 * 384
    shown = capsys.readouterr().out
    assert "byte_perplexity" in shown and "token perplexity" in shown and "val/ppl" in shown
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_fine_tuning_from_an_exported_folder_trains_and_checkpoints(run, tmp_path):
    """GPT(init_from=...) and the data module's tokenizer_from through Lightning: the checkpoint stores the
    folder's architecture and tokenizer, and rebuilds without the folder."""
    import functools

    import lightning as L

    from lmlab.losses import LanguageModelingLoss
    from lmlab.module import LitLM
    from lmlab.optim import AdamW

    folder = export_main([str(run), "--out", str(tmp_path / "hf")])
    data = OmegaConf.load(run / "config.yaml").data
    datamodule = LMDataModule(TextFiles(data.corpus.paths), block_size=16, batch_size=4, val_fraction=0.2,
                              cache_dir=data.cache_dir, tokenizer_from=str(folder))
    datamodule.prepare_data()
    model = GPT(init_from=str(folder), n_layer=3)  # the folder's 1 layer wins
    module = LitLM(model, LanguageModelingLoss(), functools.partial(AdamW, lr=1e-3),
                   tokenizer=datamodule.load_tokenizer())
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, val_check_interval=2, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    folder.rename(tmp_path / "gone")
    loaded, tokenizer, _ = load_checkpoint(tmp_path / "tuned.ckpt")
    assert loaded.config.n_layer == 1 and tokenizer.encode("def f(): pass") == module.tokenizer.encode("def f(): pass")
    assert 0.5 * 384 < math.exp(trainer.callback_metrics["val/loss"].item()) < 2 * 384


def test_train_py_fine_tunes_from_an_exported_folder_and_refuses_a_mismatched_tokenizer(run, make_cfg, tmp_path):
    """The README's `python train.py model.init_from=<folder> data.tokenizer_from=<folder>`; pretrained weights
    with another tokenizer, or a tokenizer with more ids than the model's vocabulary, are refused before any work."""
    from lmlab.cli.train import train
    from lmlab.errors import InputError

    folder = export_main([str(run), "--out", str(tmp_path / "hf")])
    with pytest.raises(InputError, match=r"model.init_from=.*set data.tokenizer_from"):
        train(make_cfg(f"model.init_from={folder}"))
    with pytest.raises(InputError, match=r"data.tokenizer_from=.*384 ids, more than model.vocab_size=300"):
        train(make_cfg(f"data.tokenizer_from={folder}", "data.vocab_size=300", run_dir=tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    val_loss = train(make_cfg(f"model.init_from={folder}", f"data.tokenizer_from={folder}", run_dir=tmp_path / "tuned"))
    assert math.isfinite(val_loss)
    loaded, _, _ = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.ckpt")
    assert loaded.config.block_size == TINY["block_size"]  # the folder's, not the overrides' model.block_size=64
