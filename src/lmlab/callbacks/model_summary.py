"""The table printed when training starts: the module's layers, its parameters and its training FLOPs."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities.model_summary import summarize
from rich.console import Console
from rich.table import Table

from lmlab.arguments import NonNegativeInt, checked
from lmlab.cost import format_quantity, model_shape, train_flops_per_token


class ModelSummary(L.Callback):
    """Lightning's layer table (name, type, parameters, train/eval mode) and parameter totals, with the
    training FLOPs per token of lmlab's cost model (6·N + attention at the data's sequence length,
    :mod:`lmlab.cost`) in place of Lightning's FLOPs column, which counts a forward pass of an
    ``example_input_array`` and shows 0 without one.

    Lightning's own summary is switched off by ``trainer.enable_model_summary: false``.
    """

    @checked
    def __init__(self, max_depth: NonNegativeInt = 1, console: Console | None = None):
        self.max_depth = max_depth
        self.console = console  # created when printing: a Console holds a lock, which ddp_spawn cannot pickle

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.max_depth:
            console = self.console or Console()
            console.print(self.table(pl_module))
            for line in self.totals(pl_module, getattr(trainer.datamodule, "block_size", None)):
                console.print(line, highlight=False, soft_wrap=True)  # one line each, also in a log file

    def table(self, pl_module: L.LightningModule) -> Table:
        summary = summarize(pl_module, max_depth=self.max_depth)
        table = Table(header_style="bold magenta")
        for name, justify in ((" ", "left"), ("Name", "left"), ("Type", "left"), ("Params", "right"),
                              ("Mode", "left")):
            table.add_column(name, justify=justify)
        rows = zip(summary.layer_names, summary.layer_types, summary.param_nums, summary.training_modes, strict=True)
        for i, (name, kind, params, training) in enumerate(rows):
            table.add_row(str(i), name, kind, format_quantity(params), "train" if training else "eval")
        return table

    @staticmethod
    def totals(pl_module: L.LightningModule, seq_len: int | None) -> list[str]:
        params = list(pl_module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        lines = [f"Trainable params: {format_quantity(trainable)}",
                 f"Non-trainable params: {format_quantity(total - trainable)}",
                 f"Total params: {format_quantity(total)}"]
        model = getattr(pl_module, "model", None)
        if model is not None and seq_len:
            try:
                shape = model_shape(model)
            except (AttributeError, ValueError):  # not a transformer LM lmlab knows the shape of
                return lines
            flops = train_flops_per_token(shape, seq_len)
            lines.append(f"Training FLOPs per token: {format_quantity(flops)} "
                         f"(6 x {format_quantity(shape.n_matmul_params)} weights + attention over {seq_len} tokens)")
        return lines
