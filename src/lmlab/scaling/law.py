"""Approach 3 of Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models", appendix D.2):
the parametric loss L(N, D) = E + A / N^α + B / D^β, fitted as the paper does.

With a = log A, b = log B, e = log E the fit minimises, over (a, b, e, α, β),

    Σ_i  Huber_δ( LSE(a − α log N_i,  b − β log D_i,  e) − log L_i ),     δ = 1e-3

(LSE = log-sum-exp, so the model is log L and the residuals are in log loss) with L-BFGS from every point
of the paper's grid: α, β ∈ {0, 0.5, ..., 2}, e ∈ {−1, −0.5, ..., 1}, a, b ∈ {0, 5, ..., 25} (4,500 starts);
the fit is the end point with the lowest objective. All starts run at once (:mod:`lmlab.scaling.lbfgs`).

Bootstrap intervals resample the points with replacement and refit. A resample changes the objective
only a little, so its minimum lies near one of the full fit's local minima: each resample restarts from
the full fit's best distinct end points (``starts_per_resample``) rather than from all 4,500 grid
points, and all resamples run as one batch (a resample is a vector of integer weights on the points).

The compute-optimal allocation under C = 6 N D (section 3.3, eq. 4):
N_opt = G (C/6)^a, D_opt = G⁻¹ (C/6)^b with G = (αA / (βB))^(1/(α+β)), a = β/(α+β), b = α/(α+β).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from lmlab.arguments import Fraction, Positive, PositiveInt, checked
from lmlab.errors import InputError
from lmlab.scaling import lbfgs

HUBER_DELTA = 1e-3
CHUNK = 256  # problems evaluated together
PARAMETERS = ("E", "A", "B", "alpha", "beta")
# the paper's grid of initial points, in the order of the fit's variables (a, b, e, alpha, beta)
GRID = {"a": np.arange(0, 26, 5.0), "b": np.arange(0, 26, 5.0), "e": np.arange(-1, 1.01, 0.5),
        "alpha": np.arange(0, 2.01, 0.5), "beta": np.arange(0, 2.01, 0.5)}


@dataclass(frozen=True)
class Allocation:
    """A compute budget split between parameters and tokens, and the loss the law predicts for it."""

    flops: float
    params: float
    tokens: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta, held as the fit's own variables (log E, log A, log B, alpha,
    beta): a degenerate fit of a few points (a bootstrap resample) may have an A or B beyond any float,
    with a finite A / N^alpha. ``ScalingLaw.of(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)``."""

    log_E: float
    log_A: float
    log_B: float
    alpha: float
    beta: float

    @classmethod
    def of(cls, E: float, A: float, B: float, alpha: float, beta: float) -> ScalingLaw:
        return cls(math.log(E), math.log(A), math.log(B), alpha, beta)

    @classmethod
    def from_variables(cls, x) -> ScalingLaw:
        """From the fit's variables (a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta)."""
        a, b, e, alpha, beta = (float(v) for v in x)
        return cls(log_E=e, log_A=a, log_B=b, alpha=alpha, beta=beta)

    E = property(lambda self: _exp(self.log_E))
    A = property(lambda self: _exp(self.log_A))
    B = property(lambda self: _exp(self.log_B))

    def loss(self, params, tokens) -> np.ndarray:
        log_n, log_d = np.log(np.asarray(params, dtype=float)), np.log(np.asarray(tokens, dtype=float))
        return np.exp(self.log_E) + np.exp(self.log_A - self.alpha * log_n) + np.exp(self.log_B - self.beta * log_d)

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b): N_opt ∝ C^a, D_opt ∝ C^b."""
        return self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)

    def optimal_params(self, flops) -> np.ndarray:
        """N_opt for each budget in ``flops`` (any array shape)."""
        if self.alpha <= 0 or self.beta <= 0:
            raise InputError(f"the fitted law has alpha={self.alpha:.3g}, beta={self.beta:.3g}: the loss does not "
                             "fall with both model size and data over these points, so no compute-optimal split "
                             "exists (a sweep over more sizes and budgets may fix it)")
        log_g = (math.log(self.alpha) + self.log_A - math.log(self.beta) - self.log_B) / (self.alpha + self.beta)
        return np.exp(log_g + self.exponents[0] * np.log(np.asarray(flops, dtype=float) / 6))

    @checked
    def optimal(self, flops: Positive) -> Allocation:
        """The (N, D) with 6 N D = flops that minimises the law's loss."""
        params = float(self.optimal_params(flops))
        tokens = flops / (6 * params)
        return Allocation(flops, params, tokens, float(self.loss(params, tokens)))


def _exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf


def grid_starts() -> torch.Tensor:
    """The paper's 4,500 initial points, [4500, 5] in the order (a, b, e, alpha, beta)."""
    return torch.tensor(list(itertools.product(*GRID.values())), dtype=torch.float64)


class HuberLogLoss:
    """The fit's objective and its gradient for a batch of problems; problem i weighs the points by
    ``weights[which[i]]`` (resample counts for the bootstrap; None: every point weighs 1)."""

    def __init__(self, params, tokens, loss, delta: float = HUBER_DELTA, weights: torch.Tensor | None = None,
                 which: torch.Tensor | None = None):
        self.log_n = torch.as_tensor(np.log(params), dtype=torch.float64)
        self.log_d = torch.as_tensor(np.log(tokens), dtype=torch.float64)
        self.log_loss = torch.as_tensor(np.log(loss), dtype=torch.float64)
        self.delta = delta
        self.weights, self.which = weights, which  # None: every point weighs 1
        self.n_moments = torch.stack([torch.ones_like(self.log_n), -self.log_n], 1)
        self.d_moments = torch.stack([torch.ones_like(self.log_d), -self.log_d], 1)

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # chunks of rows whose [rows, points] temporaries stay in cache: ~1.5x faster than one pass
        parts = [self._evaluate(chunk, rows_chunk)
                 for chunk, rows_chunk in zip(x.split(CHUNK), rows.split(CHUNK), strict=True)]
        return torch.cat([value for value, _ in parts]), torch.cat([grad for _, grad in parts])

    def _evaluate(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, e = x[:, 0, None], x[:, 1, None], x[:, 2, None]
        by_n = torch.outer(x[:, 3], self.log_n).neg_().add_(a)  # the three terms of the LSE, [rows, points]
        by_d = torch.outer(x[:, 4], self.log_d).neg_().add_(b)
        top = torch.maximum(by_n, by_d).clamp_(min=e)
        by_n.sub_(top).exp_()
        by_d.sub_(top).exp_()
        by_e = (e - top).exp_()
        total = by_n.add(by_d).add_(by_e)
        residual = total.log().add_(top).sub_(self.log_loss)  # LSE - log L
        total.reciprocal_()  # the terms times this are the softmax: d LSE / d term
        size = residual.abs()
        inner = size.clamp(max=self.delta)
        huber = size.sub_(inner, alpha=0.5).mul_(inner)  # r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) beyond
        slope = residual.clamp_(-self.delta, self.delta).mul_(total)  # d Huber / d residual / sum of the terms
        if self.which is not None:
            weights = self.weights[self.which[rows]]
            huber.mul_(weights)
            slope.mul_(weights)
        value = huber.sum(1)
        by_n.mul_(slope), by_d.mul_(slope), by_e.mul_(slope)
        # d/da = sum(by_n), d/dalpha = -sum(by_n log N); likewise b, beta with D; d/de = sum(by_e)
        n_part, d_part = by_n @ self.n_moments, by_d @ self.d_moments
        return value, torch.stack([n_part[:, 0], d_part[:, 0], by_e.sum(1), n_part[:, 1], d_part[:, 1]], 1)


@dataclass
class LawFit:
    law: ScalingLaw
    objective: float  # the Huber objective at the fit
    ends: torch.Tensor  # [starts, 5] every start's end point (a, b, e, alpha, beta)
    end_values: torch.Tensor  # [starts] their objectives
    converged: float  # fraction of starts stopped by a tolerance

    def distinct_minima(self, count: int, tolerance: float = 1e-3) -> torch.Tensor:
        """The ``count`` best end points that differ from each other (any variable by > ``tolerance``)."""
        chosen: list[torch.Tensor] = []
        for i in torch.argsort(self.end_values).tolist():
            point = self.ends[i]
            if torch.isfinite(self.end_values[i]) and all((point - c).abs().max() > tolerance for c in chosen):
                chosen.append(point)
                if len(chosen) == count:
                    break
        return torch.stack(chosen)


def fit_law(params, tokens, loss, huber_delta: float = HUBER_DELTA, starts: torch.Tensor | None = None) -> LawFit:
    """Approach 3: the best of L-BFGS runs from every start (default: the paper's grid)."""
    starts = grid_starts() if starts is None else starts
    result = lbfgs.minimize(HuberLogLoss(params, tokens, loss, huber_delta), starts)
    values = torch.where(torch.isfinite(result.value), result.value, torch.inf)
    best = int(torch.argmin(values))
    return LawFit(ScalingLaw.from_variables(result.x[best]), float(values[best]), result.x, values,
                  float(result.converged.double().mean()))


@dataclass
class Bootstrap:
    laws: list[ScalingLaw]  # one per resample
    level: float

    def interval(self, quantity) -> tuple[float, float]:
        """The percentile interval of ``quantity(law)`` over the resamples (e.g. ``lambda law: law.alpha``)."""
        values = np.array([quantity(law) for law in self.laws], dtype=float)
        tail = (1 - self.level) / 2
        low, high = np.nanquantile(values, [tail, 1 - tail])
        return float(low), float(high)

    def parameter_intervals(self) -> dict[str, tuple[float, float]]:
        return {name: self.interval(lambda law, name=name: getattr(law, name)) for name in PARAMETERS}


@checked
def bootstrap_law(params, tokens, loss, fit: LawFit, resamples: PositiveInt = 1000, level: Fraction = 0.95,
                  starts_per_resample: PositiveInt = 8, seed: int = 0, huber_delta: Positive = HUBER_DELTA
                  ) -> Bootstrap:
    """Percentile bootstrap: ``resamples`` resamples of the points with replacement (seeded), each refitted
    from the full fit's ``starts_per_resample`` best distinct minima."""
    n = len(params)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (resamples, n), generator=generator)
    weights = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, n, dtype=torch.float64))
    starts = fit.distinct_minima(starts_per_resample)
    k = len(starts)
    which = torch.arange(resamples).repeat_interleave(k)
    objective = HuberLogLoss(params, tokens, loss, huber_delta, weights, which)
    result = lbfgs.minimize(objective, starts.repeat(resamples, 1))
    values = torch.where(torch.isfinite(result.value), result.value, torch.inf).view(resamples, k)
    best = values.argmin(1) + torch.arange(resamples) * k
    return Bootstrap([ScalingLaw.from_variables(x) for x in result.x[best]], level)
