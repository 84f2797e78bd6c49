"""lmlab.targets.build rebuilds a saved config node without Hydra: the same objects as Hydra's instantiate."""

from __future__ import annotations

import functools

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.data import LMDataModule, StdlibCode
from lmlab.errors import ArgumentError
from lmlab.targets import build


def test_build_matches_hydra_instantiate_on_nested_and_partial_nodes(tmp_path):
    data = {"_target_": "lmlab.data.LMDataModule", "corpus": {"_target_": "lmlab.data.StdlibCode"},
            "vocab_size": 300, "block_size": 16, "batch_size": 2, "cache_dir": str(tmp_path)}
    ours, hydra = build(data), instantiate(OmegaConf.create(data), _convert_="all")
    assert type(ours) is type(hydra) is LMDataModule and isinstance(ours.corpus, StdlibCode)
    assert ours.corpus.fingerprint() == hydra.corpus.fingerprint()
    assert (ours.vocab_size, ours.block_size, ours.batch_size) == (hydra.vocab_size, hydra.block_size, 2)

    optimizer = {"_target_": "lmlab.optim.AdamW", "_partial_": True, "lr": 0.01, "betas": [0.9, 0.99]}
    ours, hydra = build(optimizer), instantiate(OmegaConf.create(optimizer), _convert_="all")
    assert isinstance(ours, functools.partial) and ours.func is hydra.func and ours.keywords == hydra.keywords

    lists = {"a": [{"_target_": "builtins.dict", "x": 1}, 2], "_target_": "builtins.dict"}
    assert build(lists) == instantiate(OmegaConf.create(lists), _convert_="all") == {"a": [{"x": 1}, 2]}
    flat = {"_target_": "builtins.dict", "_recursive_": False, "inner": {"_target_": "builtins.dict"}}
    assert build(flat) == {"inner": {"_target_": "builtins.dict"}}


def test_build_raises_the_constructors_own_argument_error():
    with pytest.raises(ArgumentError, match="block_size=0"):
        build({"_target_": "lmlab.data.LMDataModule", "corpus": {"_target_": "lmlab.data.StdlibCode"},
               "block_size": 0})
