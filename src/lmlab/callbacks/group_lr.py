"""Each parameter group's learning rate, ``train/lr/<group>``, beside LitLM's ``train/lr`` (the first group's).

Groups have their own LRs under μP (``lmlab.optim.mup``: hidden, embedding, vector, readout) and in Muon (its
AdamW part); this makes every one visible in W&B and metrics.csv. Logged on the trainer's logging steps only
(the values are Python floats: no device sync), at the same steps as ``train/lr``.
"""

from __future__ import annotations

from collections import Counter

import lightning as L


def group_labels(param_groups: list[dict]) -> list[str]:
    """A distinct label per group: its ``name`` (``group<i>`` without one); names that repeat (Muon splits
    ``decay`` into a Muon and an AdamW group) get ``/muon`` or ``/adamw``, else ``/<index>``."""
    names = [str(g.get("name", f"group{i}")) for i, g in enumerate(param_groups)]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    labels = []
    for i, (name, group) in enumerate(zip(names, param_groups, strict=True)):
        if name in repeated:
            name += ("/muon" if group["use_muon"] else "/adamw") if "use_muon" in group else f"/{i}"
        labels.append(name)
    return labels


class GroupLearningRates(L.Callback):
    """Logs ``train/lr/<group label>`` of the first optimizer's groups when it has more than one."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int):
        step = trainer.global_step + 1  # as LitLM: Lightning writes after every log_every_n_steps-th step
        every = trainer.log_every_n_steps
        if not trainer.optimizers or not every or (step % every and step != trainer.max_steps):
            return
        groups = trainer.optimizers[0].param_groups
        if len(groups) < 2:
            return
        for label, group in zip(group_labels(groups), groups, strict=True):
            pl_module.log(f"train/lr/{label}", float(group["lr"]), on_step=True, on_epoch=False, batch_size=1)
