"""lmlab's μP learning rates and weight decay, parameter by parameter, against microsoft/mup 1.0.0.

mup depends on torchvision, so it is not a dependency of lmlab; unpack its source next to this script:

    pip download --no-deps mup==1.0.0 -d /tmp/mup && tar xzf /tmp/mup/mup-1.0.0.tar.gz -C /tmp/mup
    PYTHONPATH=/tmp/mup/mup-1.0.0 python experiments/mup_transfer/check_against_mup.py

mup's side: the same GPT in the standard parametrization with its lm_head replaced by a MuReadout,
``set_base_shapes`` (base width 32, delta 64) and MuAdamW / MuSGD over all parameters; lmlab's side: the μP
GPT at base width 32 with lmlab's AdamW / SGD. Weight decay is compared where lmlab decays (matrices).
"""

from __future__ import annotations

import torch
from mup import MuAdamW, MuReadout, MuSGD, set_base_shapes

from lmlab.models import GPT
from lmlab.optim import SGD, AdamW

SHAPES = {
    "gpt2": dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, tie_embeddings=False),
    "llama": dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_kv_head=2, bias=False, position="rope",
                  norm="rmsnorm", mlp="swiglu", tie_embeddings=False),
}


def per_parameter(model, optimizer) -> dict[str, tuple[float, float]]:
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def reference_model(config: dict, width: int) -> GPT:
    model = GPT(**config, n_embd=width)
    model.lm_head = MuReadout(width, config["vocab_size"], bias=False)
    return model


def main(width: int = 256) -> None:
    for shape, config in SHAPES.items():
        ours = GPT(**config, n_embd=width, parametrization="mup", mup_base_width=32)
        theirs = set_base_shapes(reference_model(config, width), reference_model(config, 32),
                                 delta=reference_model(config, 64))
        for lmlab_cls, mup_cls, kwargs in ((AdamW, MuAdamW, dict(lr=1e-3, weight_decay=0.1)),
                                           (SGD, MuSGD, dict(lr=0.1, weight_decay=0.01))):
            mine = per_parameter(ours, lmlab_cls(ours, **kwargs))
            reference = per_parameter(theirs, mup_cls(theirs.parameters(), **kwargs))
            differ = [n for n, (lr, wd) in mine.items() if abs(lr - reference[n][0]) > 1e-12 * lr
                      or (wd and abs(wd - reference[n][1]) > 1e-12 * wd)]
            print(f"{shape} {lmlab_cls.__name__}: {len(mine)} parameters, differing: {differ or 'none'}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
