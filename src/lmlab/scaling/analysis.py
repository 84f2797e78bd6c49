"""A scaling study of a set of points: approach 3 with bootstrap intervals, approach 2, and what they
predict (a compute-optimal plan for a budget, the loss of runs left out of the fit), as one JSON object."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from lmlab.arguments import Fraction, Positive, PositiveInt, checked
from lmlab.errors import InputError
from lmlab.scaling.isoflop import IsoFlopFit, fit_isoflops
from lmlab.scaling.law import (
    HUBER_DELTA,
    PARAMETERS,
    Allocation,
    Bootstrap,
    LawFit,
    bootstrap_law,
    fit_law,
)
from lmlab.scaling.points import Points


@dataclass
class Study:
    points: Points
    fit: LawFit
    bootstrap: Bootstrap
    isoflops: IsoFlopFit
    huber_delta: float
    seconds: dict = field(default_factory=dict)

    @property
    def law(self):
        return self.fit.law

    def optimal(self, flops: float) -> tuple[Allocation, dict[str, tuple[float, float]]]:
        """The compute-optimal allocation of ``flops`` and the bootstrap interval of its size, tokens and loss."""
        best = self.law.optimal(flops)
        resampled = [law.optimal(flops) for law in self.bootstrap.laws if law.alpha > 0 and law.beta > 0]
        return best, {key: _percentiles([getattr(a, key) for a in resampled], self.bootstrap.level)
                      for key in ("params", "tokens", "loss")}

    def predict(self, params, tokens) -> tuple[np.ndarray, np.ndarray]:
        """(loss the fit predicts, [low, high] bootstrap intervals) at each (N, D)."""
        params, tokens = np.asarray(params, float), np.asarray(tokens, float)
        resampled = np.array([law.loss(params, tokens) for law in self.bootstrap.laws])
        tail = (1 - self.bootstrap.level) / 2
        return self.law.loss(params, tokens), np.quantile(resampled, [tail, 1 - tail], axis=0).T


def _percentiles(values, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(values, float), [tail, 1 - tail]) if len(values) else (np.nan, np.nan)
    return float(low), float(high)


@checked
def run_study(points: Points, huber_delta: Positive = HUBER_DELTA, resamples: PositiveInt = 1000,
              level: Fraction = 0.95, seed: int = 0) -> Study:
    """Approach 3 from the paper's grid with a seeded bootstrap of ``resamples``, and approach 2."""
    if len(points) < len(PARAMETERS):
        raise InputError(f"{points.source}: {len(points)} points; fitting L(N, D) = E + A / N^alpha + B / D^beta "
                         f"needs at least {len(PARAMETERS)}, one per parameter")
    seconds = {}
    start = time.perf_counter()
    fit = fit_law(points.params, points.tokens, points.loss, huber_delta)
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    bootstrap = bootstrap_law(points.params, points.tokens, points.loss, fit, resamples=resamples, level=level,
                              seed=seed, huber_delta=huber_delta)
    seconds["bootstrap"] = time.perf_counter() - start
    isoflops = fit_isoflops(points.flops, points.params, points.tokens, points.loss)
    return Study(points, fit, bootstrap, isoflops, huber_delta, seconds)


def study_json(study: Study, budget: dict | None = None, predicted: Points | None = None) -> dict:
    """The study as one JSON object: E, A, B, alpha, beta, ci, approach2, and with ``budget`` (``flops`` and
    how it was reached) ``optimal``; with ``predicted``, those points' predicted and measured losses."""
    law = study.law
    a, b = law.exponents
    out = {name: getattr(law, name) for name in PARAMETERS}
    out["ci"] = {name: list(interval) for name, interval in study.bootstrap.parameter_intervals().items()}
    out["approach3"] = {"a": a, "b": b, "ci": {"a": list(study.bootstrap.interval(lambda law: law.exponents[0])),
                                               "b": list(study.bootstrap.interval(lambda law: law.exponents[1]))}}
    iso = study.isoflops
    out["approach2"] = {"a": iso.a, "b": iso.b, "budgets": [
        {"flops": p.flops, "params": p.params_opt, "tokens": p.tokens_opt, "loss": p.loss_opt, "points": len(p.loss),
         "used": p.used, **({"note": p.note} if p.note else {})} for p in iso.profiles]}
    if budget is not None:
        best, intervals = study.optimal(budget["flops"])
        out["optimal"] = {"flops": best.flops, "params": best.params, "tokens": best.tokens, "loss": best.loss,
                          "tokens_per_param": best.tokens_per_param}
        out["optimal_ci"] = {key: list(value) for key, value in intervals.items()}
        out["budget"] = budget
    if predicted is not None:
        out["predictions"] = prediction_rows(study, predicted)
    fit = study.fit
    out["fit"] = {"params_counted": study.points.params_kind, "points": len(study.points),
                  "source": study.points.source, "left_out": study.points.left_out,
                  "huber_delta": study.huber_delta, "starts": len(fit.ends), "converged_starts": fit.converged,
                  "objective": fit.objective, "resamples": len(study.bootstrap.laws), "level": study.bootstrap.level,
                  "seconds": study.seconds}
    return _finite(out)


def _finite(value):
    """JSON has no infinity: a bound beyond every float (a degenerate resample) becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def prediction_rows(study: Study, points: Points) -> list[dict]:
    predicted, intervals = study.predict(points.params, points.tokens)
    return [{"name": name, "params": float(n), "tokens": float(d), "flops": float(c), "loss": float(measured),
             "predicted": float(p), "ci": [float(low), float(high)], "error": float(measured / p - 1)}
            for name, n, d, c, measured, p, (low, high) in zip(points.names, points.params, points.tokens,
                                                                 points.flops, points.loss, predicted, intervals,
                                                                 strict=True)]
