"""Figures of a scaling study (matplotlib ``Figure`` objects, no pyplot state): the IsoFLOP profiles with
their parabolas, the compute-optimal frontier, and predicted against measured loss per run.

    figures(points)                       # {"isoflop": Figure, "frontier": Figure, "residuals": Figure}
    figures(study, budget_flops=3e13, predicted=held_out_points)

``figures`` takes the points alone (and fits them) so that a report of a scaling sweep needs one call.
"""

from __future__ import annotations

import numpy as np

from lmlab.scaling.analysis import Study, run_study
from lmlab.scaling.isoflop import fit_isoflops
from lmlab.scaling.points import Points

PARAMS_LABEL = {"total": "parameters N", "non_embedding": "non-embedding parameters N"}


def figures(study: Study | Points, budget_flops: float | None = None, predicted: Points | None = None) -> dict:
    """{name: Figure}: "isoflop", "frontier" (with ``budget_flops`` marked) and "residuals" (with the
    ``predicted`` points, left out of the fit, marked)."""
    if isinstance(study, Points):
        study = run_study(study)
    return {"isoflop": plot_isoflops(study, predicted), "frontier": plot_frontier(study, budget_flops),
            "residuals": plot_residuals(study, predicted)}


def _figure(panels: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * panels, 4.2), layout="constrained")
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    return fig, axes


def _colors(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](0.85 * i / max(n - 1, 1)) for i in range(n)]


def _budget(flops: float) -> str:
    return f"C = {flops:.2g}"


def plot_isoflops(study: Study, predicted: Points | None = None):
    """Loss against N per budget: the points, the parabola (approach 2) with its minimum (a filled star when
    it is used for the power laws, hollow when not), and approach 3's loss along the same budget (dashed)."""
    fig, (ax,) = _figure()
    profiles = study.isoflops.profiles
    for profile, color in zip(profiles, _colors(len(profiles)), strict=True):
        ax.plot(profile.params, profile.loss, "o", color=color, label=_budget(profile.flops))
        if profile.tokens_relation is None:
            continue
        grid = np.geomspace(profile.params[0] / 1.5, profile.params[-1] * 1.5, 100)
        ax.plot(grid, study.law.loss(grid, profile.tokens_at(grid)), "--", color=color, lw=1)
        if profile.coefficients is not None:
            ax.plot(grid, profile.parabola(grid), "-", color=color, lw=1.5)
        if profile.params_opt is not None:
            ax.plot(profile.params_opt, profile.loss_opt, "*", ms=14, mec="black",
                    color=color if profile.used else "none")
    if predicted is not None:
        ax.plot(predicted.params, predicted.loss, "D", color="crimson", mec="black", label="left out of the fit")
        held_out = fit_isoflops(predicted.flops, predicted.params, predicted.tokens, predicted.loss).profiles
        for profile in (p for p in held_out if p.tokens_relation is not None):  # the law's prediction along them
            grid = np.geomspace(profile.params[0] / 1.5, profile.params[-1] * 1.5, 100)
            ax.plot(grid, study.law.loss(grid, profile.tokens_at(grid)), "--", color="crimson", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(PARAMS_LABEL[study.points.params_kind])
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("IsoFLOP profiles: parabolas in log N (solid), approach 3 (dashed)")
    ax.legend(fontsize=8)
    return fig


def plot_frontier(study: Study, budget_flops: float | None = None):
    """N_opt(C) and D_opt(C): approach 2's minima and power law, approach 3 with its bootstrap band."""
    fig, axes = _figure(2)
    iso, level = study.isoflops, study.bootstrap.level
    budgets = [p.flops for p in iso.profiles]
    low, high = min(budgets) / 3, max(budgets + ([budget_flops] if budget_flops else [])) * 3
    flops = np.geomspace(low, high, 60)
    usable = [law for law in study.bootstrap.laws if law.alpha > 0 and law.beta > 0]
    law_ok = study.law.alpha > 0 and study.law.beta > 0
    for ax, key, name, power_law in ((axes[0], "params", "N_opt", iso.params_law),
                                     (axes[1], "tokens", "D_opt", iso.tokens_law)):
        used = [p for p in iso.profiles if p.params_opt is not None]
        ax.plot([p.flops for p in used], [getattr(p, f"{key}_opt") for p in used], "o", color="C0",
                label="approach 2: IsoFLOP minima")
        if power_law is not None:
            ax.plot(flops, power_law(flops), "-", color="C0", lw=1,
                    label=f"approach 2: ∝ C^{power_law.exponent:.3f}")
        if law_ok:
            exponent = study.law.exponents[0 if key == "params" else 1]
            ax.plot(flops, _optimal(study.law, flops, key), "-", color="C3", label=f"approach 3: ∝ C^{exponent:.3f}")
            if usable:
                band = np.array([_optimal(law, flops, key) for law in usable])
                tail = (1 - level) / 2
                ax.fill_between(flops, *np.quantile(band, [tail, 1 - tail], axis=0), color="C3", alpha=0.15,
                                label=f"approach 3: {level:.0%} bootstrap")
            if budget_flops:
                ax.plot(budget_flops, _optimal(study.law, budget_flops, key), "*", ms=16, color="C3",
                        mec="black", label=f"plan for {_budget(budget_flops)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C = 6ND (FLOPs)")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[0].set_title("compute-optimal model size")
    axes[1].set_title("compute-optimal training tokens")
    return fig


def _optimal(law, flops, key: str) -> np.ndarray:
    params = law.optimal_params(flops)
    return params if key == "params" else np.asarray(flops) / (6 * params)


def plot_residuals(study: Study, predicted: Points | None = None):
    """Predicted (approach 3) against measured loss per run, and the relative residual against N."""
    fig, (ax, ax_res) = _figure(2)
    points = study.points
    fitted = study.law.loss(points.params, points.tokens)
    profiles = study.isoflops.profiles
    for profile, color in zip(profiles, _colors(len(profiles)), strict=True):
        i = profile.indices
        ax.plot(fitted[i], points.loss[i], "o", color=color, label=_budget(profile.flops))
        ax_res.plot(points.params[i], points.loss[i] / fitted[i] - 1, "o", color=color)
    values = [fitted, points.loss]
    if predicted is not None:
        guess, intervals = study.predict(predicted.params, predicted.tokens)
        errors = np.abs(intervals.T - guess)
        ax.errorbar(guess, predicted.loss, xerr=errors, fmt="D", color="crimson", mec="black",
                    label="left out of the fit")
        ax_res.errorbar(predicted.params, predicted.loss / guess - 1, yerr=errors / guess, fmt="D",
                        color="crimson", mec="black")
        values += [guess, predicted.loss]
    span = [min(v.min() for v in values) * 0.98, max(v.max() for v in values) * 1.02]
    ax.plot(span, span, "-", color="0.5", lw=1)
    ax.set_xlabel("predicted loss (approach 3)")
    ax.set_ylabel("measured loss")
    ax.set_title("predicted against measured")
    ax.legend(fontsize=8)
    ax_res.axhline(0, color="0.5", lw=1)
    ax_res.set_xscale("log")
    ax_res.set_xlabel(PARAMS_LABEL[points.params_kind])
    ax_res.set_ylabel("measured / predicted - 1")
    ax_res.set_title("relative residuals")
    return fig
