"""The coordinate check of μP (Yang et al. 2022, TP5 §D.1): activations against width over the first steps.

For each width and parametrization, one model per seed trains a few steps with a real optimizer on
random tokens (Zipf-distributed, so that the first steps have a direction to learn: the unigram
frequencies), and after every step the same held-out batch is run through it, recording per layer the
mean |activation| and the mean |change since initialisation|: the embedding output (token + position),
each block's attention and MLP outputs (before the residual add), and the logits. Under μP every curve is
flat in width; under the standard parametrization the hidden outputs grow with width at init and the
logits' change grows with width during training (the readout's update is summed over n_embd inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("embedding", "attention", "mlp", "logits")
HIDDEN_KINDS = ("embedding", "attention", "mlp")


def zipf_tokens(vocab_size: int, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[batch_size, length] token ids, id k drawn with probability proportional to 1 / (k + 1)."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    flat = torch.multinomial(weights, batch_size * length, replacement=True, generator=generator)
    return flat.view(batch_size, length)


def _recorded_modules(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """{layer name: (kind, module whose output is recorded)} of lmlab's GPT."""
    layers = {"embedding": ("embedding", model.drop)}
    for i, block in enumerate(model.blocks):
        layers[f"blocks.{i}.attn"] = ("attention", block.attn)
        layers[f"blocks.{i}.mlp"] = ("mlp", block.mlp)
    return layers


@torch.no_grad()
def _activations(model: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """{layer name: output} on ``batch`` (eval mode: no dropout), the logits under ``logits``."""
    outputs, handles = {}, []
    for name, (_, module) in _recorded_modules(model).items():
        handles.append(module.register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(name, out)))
    was_training = model.training
    model.eval()
    try:
        outputs["logits"] = model(batch).logits
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: out.float() for name, out in outputs.items()}


def coord_check(
    build_model: Callable[[int, str], nn.Module],
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    widths: Sequence[int],
    steps: int = 3,
    seeds: Sequence[int] = (0, 1),
    parametrizations: Sequence[str] = ("standard", "mup"),
    batch_size: int = 8,
    seq_len: int = 64,
) -> list[dict]:
    """Rows ``{parametrization, width, step, layer, kind, mean_abs, mean_abs_change}``, averaged over seeds.

    ``build_model(width, parametrization)`` returns lmlab's GPT at that n_embd (under the seed already
    set); ``build_optimizer(model)`` its optimizer, run at its base LR (no schedule, no clipping). Step 0 is
    the initialisation; step t the model after t updates, each on a fresh batch.
    """
    sums: dict[tuple, list[float]] = {}
    for parametrization in parametrizations:
        for width in widths:
            for seed in seeds:
                torch.manual_seed(seed)
                model = build_model(width, parametrization)
                optimizer = build_optimizer(model)
                kinds = {name: kind for name, (kind, _) in _recorded_modules(model).items()} | {"logits": "logits"}
                data = torch.Generator().manual_seed(10_000 + seed)  # the same tokens at every width
                vocab = model.config.vocab_size
                held_out = zipf_tokens(vocab, batch_size, seq_len, data)
                initial = _activations(model, held_out)
                for step in range(steps + 1):
                    if step:
                        batch = zipf_tokens(vocab, batch_size, seq_len + 1, data)
                        logits = model(batch[:, :-1]).logits
                        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    current = initial if step == 0 else _activations(model, held_out)
                    for name, out in current.items():
                        values = (out.abs().mean().item(), (out - initial[name]).abs().mean().item())
                        key = (parametrization, width, step, name, kinds[name])
                        total = sums.setdefault(key, [0.0, 0.0])
                        total[0] += values[0] / len(seeds)
                        total[1] += values[1] / len(seeds)
    return [{"parametrization": p, "width": w, "step": s, "layer": name, "kind": kind,
             "mean_abs": mean_abs, "mean_abs_change": change}
            for (p, w, s, name, kind), (mean_abs, change) in sums.items()]


def width_ratios(rows: list[dict], quantity: str = "mean_abs") -> dict[tuple[str, int, str], float]:
    """{(parametrization, step, layer): quantity at the widest width / at the narrowest}."""
    values = {(r["parametrization"], r["step"], r["layer"], r["width"]): r[quantity] for r in rows}
    widths = sorted({r["width"] for r in rows})
    out = {}
    for p, s, layer, w in values:
        if w == widths[0] and values[p, s, layer, widths[0]]:
            out[p, s, layer] = values[p, s, layer, widths[-1]] / values[p, s, layer, widths[0]]
    return out


def plot(rows: list[dict], path: str) -> None:
    """One panel per layer kind (columns) and quantity x parametrization (rows: mean |h|, mean |h - h0|),
    width on a log2 x axis, one line per step (attention and MLP: the mean over blocks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parametrizations = list(dict.fromkeys(r["parametrization"] for r in rows))
    steps = sorted({r["step"] for r in rows})
    quantities = (("mean_abs", "mean |h|"), ("mean_abs_change", "mean |h - h0|"))
    panels = [(q, label, p) for q, label in quantities for p in parametrizations]
    fig, axes = plt.subplots(len(panels), len(KINDS), figsize=(3.2 * len(KINDS), 2.6 * len(panels)),
                             squeeze=False)
    colors = plt.get_cmap("viridis")
    for i, (quantity, label, parametrization) in enumerate(panels):
        for j, kind in enumerate(KINDS):
            ax = axes[i][j]
            for step in steps:
                if quantity == "mean_abs_change" and step == 0:
                    continue
                points: dict[int, list[float]] = {}
                for r in rows:
                    if (r["parametrization"], r["kind"], r["step"]) == (parametrization, kind, step):
                        points.setdefault(r["width"], []).append(r[quantity])
                widths = sorted(points)
                ax.plot(widths, [sum(points[w]) / len(points[w]) for w in widths], marker="o",
                        color=colors(step / max(steps[-1], 1)), label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization}: {kind}", fontsize=9)
            ax.set_xlabel("n_embd", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
