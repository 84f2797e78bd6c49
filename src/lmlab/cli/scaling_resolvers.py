"""The arithmetic of sweeps/scaling.yaml, as OmegaConf resolvers (a Hydra sweep cannot compute):

    ${lmlab.scaling.params:${model}}                 total parameters of the model node (built on the meta device)
    ${lmlab.scaling.non_embedding_params:${model}}   the same without embedding tables
    ${lmlab.scaling.steps:C,N,B,T}                   optimizer steps for D = C / (6 N) tokens at B x T tokens per step
    ${lmlab.scaling.product:a,b,...}                 a x b x ... (a width from a depth, tokens from steps)
    ${lmlab.scaling.short:C}                         1e+12 for 1000000000000.0 (job directory names)
"""

from __future__ import annotations

import functools
import json

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmlab.scaling.params import count_parameters


@functools.lru_cache(maxsize=64)
def _counts(model_json: str) -> tuple[int, int]:
    with torch.device("meta"):
        return count_parameters(instantiate(json.loads(model_json)))


def _model_counts(model: DictConfig) -> tuple[int, int]:
    return _counts(json.dumps(OmegaConf.to_container(model, resolve=True), sort_keys=True))


def params(model: DictConfig) -> int:
    return _model_counts(model)[0]


def non_embedding_params(model: DictConfig) -> int:
    return _model_counts(model)[1]


def steps(flops: float, params: int, batch_size: int, block_size: int) -> int:
    """The whole number of optimizer steps nearest to C / (6 N) tokens, at least one."""
    return max(1, round(flops / (6 * params) / (batch_size * block_size)))


def product(*factors: int) -> int:
    out = 1
    for factor in factors:
        out *= factor
    return out


def short(number: float) -> str:
    return f"{number:.3g}"


for _name, _resolver in (("params", params), ("non_embedding_params", non_embedding_params), ("steps", steps),
                         ("product", product), ("short", short)):
    OmegaConf.register_new_resolver(f"lmlab.scaling.{_name}", _resolver, replace=True)
