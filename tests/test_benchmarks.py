"""The benchmarks run (``--smoke``: tiny shapes, a few steps or tokens) and print what they promise, so
they cannot rot between the runs that measure. No timing is asserted."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import ROOT

TINY_MODEL = ["n_layer=1", "n_embd=32", "n_head=2", "block_size=64"]


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return lambda name: importlib.import_module(name)


def tiny_data(corpus_dir, cache_dir) -> list[str]:
    return ["data=text_files", f"data.corpus.paths={corpus_dir}", "data.vocab_size=384",
            f"paths.cache_dir={cache_dir}"]


def test_train_step_smoke(benchmark, corpus_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = benchmark("train_step").main(["--smoke", "--batch-size", "4", "--seq-len", "32", "--model-overrides",
                                        *TINY_MODEL, "--override", *tiny_data(corpus_dir, cache_dir), "logger=csv"])
    assert set(out["variants"]) == {"plain", "lit", "default", "hf"}
    for variant in out["variants"].values():
        assert variant["tokens_per_s"] > 0 and 0 < variant["mfu"] < 1
    assert set(out["ratio_to_plain"]) == {"lit", "default", "hf"}


def test_decode_smoke(benchmark, corpus_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = benchmark("decode").main(["--smoke", "--configs", "gpt_tiny:1", "--spec-model", "gpt_tiny",
                                    "--override", *tiny_data(corpus_dir, cache_dir), "model.n_layer=1",
                                    "model.n_embd=32", "model.n_head=2", "data.block_size=32", "data.batch_size=8"])
    greedy = next(row for row in out["vs_generate"] if row["strategy"] == "greedy")
    assert {"lmlab_eager_tok_s", "lmlab_compiled_tok_s", "generate_tok_s", "generate_static_tok_s"} <= set(greedy)
    assert greedy["same_tokens"]["lmlab_compiled"]
    assert out["where_time_goes"][0]["matmuls_ms_per_token"] > 0
    spec = out["speculative"]
    assert spec["draft"]["loss"] == "distill" and spec["speculative_draft_compiled"]["same_as_greedy"]


def test_startup_smoke(benchmark, corpus_dir, cache_dir, capsys):
    out = benchmark("startup").main(["--smoke", "--override", *tiny_data(corpus_dir, cache_dir), "logger=csv",
                                     *[f"model.{o}" for o in TINY_MODEL], "data.block_size=32"])
    marks = out["median_marks"]
    assert 0 < marks["setup"] < marks["train_start"] < marks["first_batch"] < marks["first_step_done"]
    [lmlab] = out["imports"]  # --smoke: `import lmlab` only
    assert lmlab["module"] == "lmlab" and lmlab["heavy_imports"]["transformers"] == "not imported"
    assert json.loads(capsys.readouterr().out)["benchmark"] == "startup"


def test_optim_step_smoke(benchmark):
    out = benchmark("optim_step").main(["--smoke"])
    assert {"torch_adamw_foreach", "lmlab_adamw", "lmlab_adamw_skip_flag", "lmlab_adam"} <= set(out["ms_per_step"])
    assert all(ms > 0 for ms in out["ms_per_step"].values()) and out["ratio_to_torch_adamw_foreach"]["lmlab_adamw"] > 0


def test_data_audit_smoke(benchmark):
    out = benchmark("data_audit").main(["--smoke"])
    assert out["signatures_per_s"]["lmlab_numpy"] > 0 and out["lmlab_lsh_recall_at_0.8"] >= 0.95
    assert all(error < 0.06 for error in out["mean_abs_jaccard_error"].values())


def test_scaling_fit_smoke(benchmark):
    out = benchmark("scaling_fit").main(["--smoke"])
    assert out["starts"] == 60 and out["scipy_starts"] == 3 and out["batched_seconds"] > 0
    assert all(value > 0 for value in out["sample_best_objective"].values())


def test_recipe_smoke(benchmark, cache_dir, capsys):
    out = benchmark("recipe").main(["--smoke", "--cache-dir", str(cache_dir)])
    (round_,) = out["rounds"]
    assert set(round_) == {"plain", "default", "callbacks_none", "bare"}
    for run in round_.values():
        assert 0 < run["first_step_s"] < run["wall_s"] and run["train_loss"] > 0 and run["val_loss"] > 0
    assert round_["default"]["callback_share"]["DecodingEvaluator"] > 0  # the probe's clock saw the callbacks
    assert set(out["speed_vs_plain"]) == {"default", "callbacks_none", "bare"}
    assert json.loads(capsys.readouterr().out)["benchmark"] == "recipe"
