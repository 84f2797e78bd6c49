"""Approach 2 of Hoffmann et al. (2022): IsoFLOP profiles.

The points of one compute budget C form a profile: loss against model size at fixed compute. A parabola
in log N through it has its minimum at N_opt(C); the tokens there, D_opt(C), are read off the profile's
own N-D relation (D = C / (6 N) when N counts every parameter). Power laws N_opt = k C^a and
D_opt = k' C^b through the minima (least squares in log-log) give the exponents.

A minimum outside the sizes a profile sampled is an extrapolation of the parabola, not a measurement:
such profiles are reported but left out of the power laws, as are profiles with fewer than three sizes
or a parabola that opens downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# points whose budgets differ by less than this factor belong to one profile (D is rounded to whole steps)
SAME_BUDGET = 1.1
MIN_POINTS = 3


@dataclass
class Profile:
    flops: float
    params: np.ndarray  # sorted ascending
    tokens: np.ndarray
    loss: np.ndarray
    indices: np.ndarray  # of its points among those fitted
    coefficients: np.ndarray | None = None  # loss = c[0] x^2 + c[1] x + c[2], x = ln N
    tokens_relation: np.ndarray | None = None  # ln D = r[0] ln N + r[1] along the profile
    params_opt: float | None = None
    tokens_opt: float | None = None
    loss_opt: float | None = None
    note: str = ""  # why the profile is not used in the power laws ("" when it is)

    @property
    def used(self) -> bool:
        return self.params_opt is not None and not self.note

    def parabola(self, params) -> np.ndarray:
        return np.polyval(self.coefficients, np.log(params))

    def tokens_at(self, params) -> np.ndarray:
        """D of a model of size N trained at this budget (D = C / (6 N) when N counts every parameter)."""
        return np.exp(np.polyval(self.tokens_relation, np.log(params)))


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent."""

    exponent: float
    coefficient: float

    def __call__(self, flops) -> np.ndarray:
        return self.coefficient * np.asarray(flops, dtype=float) ** self.exponent


@dataclass
class IsoFlopFit:
    profiles: list[Profile]
    params_law: PowerLaw | None  # N_opt(C); None with fewer than two usable profiles
    tokens_law: PowerLaw | None  # D_opt(C)

    @property
    def a(self) -> float | None:
        return self.params_law.exponent if self.params_law else None

    @property
    def b(self) -> float | None:
        return self.tokens_law.exponent if self.tokens_law else None


def group_budgets(flops: np.ndarray) -> list[np.ndarray]:
    """Indices of the points of each budget, smallest budget first."""
    order = np.argsort(flops)
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or flops[order[i]] > flops[order[start]] * SAME_BUDGET:
            groups.append(order[start:i])
            start = i
    return groups


def fit_profile(flops: float, params, tokens, loss, indices) -> Profile:
    order = np.argsort(params)
    profile = Profile(flops, np.asarray(params, float)[order], np.asarray(tokens, float)[order],
                      np.asarray(loss, float)[order], np.asarray(indices)[order])
    x = np.log(profile.params)
    if len(np.unique(x)) >= 2:
        profile.tokens_relation = np.polyfit(x, np.log(profile.tokens), 1)
    if len(np.unique(x)) < MIN_POINTS:
        profile.note = f"{len(np.unique(x))} model sizes; a parabola needs {MIN_POINTS}"
        return profile
    profile.coefficients = np.polyfit(x, profile.loss, 2)
    c2, c1, _ = profile.coefficients
    if c2 <= 0:
        profile.note = "the parabola opens downwards (no minimum)"
        return profile
    x_opt = -c1 / (2 * c2)
    profile.params_opt = float(np.exp(x_opt))
    profile.loss_opt = float(np.polyval(profile.coefficients, x_opt))
    profile.tokens_opt = float(profile.tokens_at(profile.params_opt))
    if not x[0] <= x_opt <= x[-1]:
        profile.note = (f"minimum at N={profile.params_opt:.3g}, outside the sampled sizes "
                        f"{profile.params[0]:.3g}-{profile.params[-1]:.3g}")
    return profile


def power_law(flops: np.ndarray, values: np.ndarray) -> PowerLaw:
    exponent, log_coefficient = np.polyfit(np.log(flops), np.log(values), 1)
    return PowerLaw(float(exponent), float(np.exp(log_coefficient)))


def fit_isoflops(flops, params, tokens, loss) -> IsoFlopFit:
    """Profiles of every budget in ``flops`` (each point's budget), and the power laws through their minima."""
    flops, params, tokens, loss = (np.asarray(v, dtype=float) for v in (flops, params, tokens, loss))
    profiles = [fit_profile(float(np.exp(np.log(flops[g]).mean())), params[g], tokens[g], loss[g], g)
                for g in group_budgets(flops)]
    used = [p for p in profiles if p.used]
    if len(used) < 2:
        return IsoFlopFit(profiles, None, None)
    budgets = np.array([p.flops for p in used])
    return IsoFlopFit(profiles, power_law(budgets, np.array([p.params_opt for p in used])),
                      power_law(budgets, np.array([p.tokens_opt for p in used])))
