"""L-BFGS on many independent small problems at once: one tensor row per problem, each with its own
curvature history, step length and stopping test.

A scaling-law fit minimises the same 5-parameter objective from thousands of starting points (and again
for every bootstrap resample). One ``scipy.optimize.minimize`` call per start spends its time in Python;
here every iteration evaluates the objective of all unfinished problems in one batched call, so the cost
is that of a few hundred tensor operations instead of a few hundred thousand small ones. The problems
stay independent: nothing about one row (history, step, convergence) depends on another, so each row
follows the iterates L-BFGS would follow for it alone (the tests compare rows with scipy's L-BFGS-B).

The line search is backtracking on the Armijo condition, starting from the unit step (the first
iteration from a step of at most 1 / ‖g‖₁, as torch.optim.LBFGS does); a pair (s, y) whose curvature
s·y is not positive is not stored, which keeps the inverse-Hessian estimate positive definite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# objective(x [k, p], rows [k]) -> (values [k], gradients [k, p]) for the problems `rows`
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BatchResult:
    x: torch.Tensor  # [n, p] the last iterate of every problem
    value: torch.Tensor  # [n] its objective
    iterations: torch.Tensor  # [n] iterations taken
    converged: torch.Tensor  # [n] bool: stopped by a tolerance, not by max_iter or a failed line search


def minimize(objective: Objective, x0: torch.Tensor, max_iter: int = 500, memory: int = 10,
             gtol: float = 1e-9, ftol: float = 1e-10, c1: float = 1e-4, max_backtracks: int = 40) -> BatchResult:
    """Minimise every row of ``x0`` [n, p] independently.

    A problem stops when its largest gradient component is at most ``gtol``, or when an iteration lowers
    its objective by at most ``ftol`` x |f| (relative: the objectives here are sums of tiny Huber terms,
    where an absolute tolerance would stop far from the minimum).
    """
    x = x0.clone()
    n, p = x.shape
    everyone = torch.arange(n, device=x.device)
    value, grad = objective(x, everyone)
    s_hist = x.new_zeros(memory, n, p)
    y_hist = x.new_zeros(memory, n, p)
    rho = x.new_zeros(memory, n)  # 1 / (s·y); 0 marks an empty slot
    slot = torch.zeros(n, dtype=torch.long, device=x.device)  # where each problem stores its next pair
    stored = torch.zeros(n, dtype=torch.long, device=x.device)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    converged = grad.abs().amax(1) <= gtol
    active = ~converged

    for _ in range(max_iter):
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        g = grad[rows]
        direction = -_inverse_hessian_times(g, s_hist[:, rows], y_hist[:, rows], rho[:, rows], slot[rows])
        slope = (g * direction).sum(1)
        uphill = slope >= 0  # cannot happen with a positive definite estimate, but rounding: restart from -g
        if uphill.any():
            direction[uphill] = -g[uphill]
            slope[uphill] = -(g[uphill] ** 2).sum(1)
            rho[:, rows[uphill]] = 0
            stored[rows[uphill]] = 0
        first = stored[rows] == 0
        step = torch.ones_like(slope)
        step[first] = torch.clamp(1.0 / g[first].abs().sum(1), max=1.0)

        new_x, new_value, new_grad, accepted = _backtrack(objective, x[rows], value[rows], g, slope, direction,
                                                          step, rows, c1, max_backtracks)
        s, y = new_x - x[rows], new_grad - grad[rows]
        curvature = (s * y).sum(1)
        keep = accepted & (curvature > 1e-12 * s.norm(dim=1) * y.norm(dim=1))
        if keep.any():
            k, at = rows[keep], slot[rows[keep]]
            s_hist[at, k], y_hist[at, k], rho[at, k] = s[keep], y[keep], 1.0 / curvature[keep]
            slot[k] = (slot[k] + 1) % memory
            stored[k] = torch.clamp(stored[k] + 1, max=memory)

        decrease = value[rows] - new_value
        x[rows], value[rows], grad[rows] = new_x, new_value, new_grad
        iterations[rows] += 1
        done = (new_grad.abs().amax(1) <= gtol) | (accepted & (decrease <= ftol * new_value.abs()))
        converged[rows] = done
        active[rows] = ~done & accepted  # a failed line search: no lower point along a descent direction
    return BatchResult(x, value, iterations, converged)


def _inverse_hessian_times(g: torch.Tensor, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor,
                           slot: torch.Tensor) -> torch.Tensor:
    """H·g by the two-loop recursion, each row with its own history (s, y [m, k, p], rho [m, k]; empty
    slots have rho = 0 and contribute nothing); H0 = γI with γ = s·y / y·y of the newest pair."""
    memory = s.shape[0]
    q = g.clone()
    order = [(slot - 1 - j) % memory for j in range(memory)]  # newest first, per row
    alphas = []
    cols = torch.arange(g.shape[0], device=g.device)
    for at in order:
        s_j, y_j, rho_j = s[at, cols], y[at, cols], rho[at, cols]
        alpha = rho_j * (s_j * q).sum(1)
        q -= alpha[:, None] * y_j
        alphas.append(alpha)
    newest = order[0]
    s_new, y_new, rho_new = s[newest, cols], y[newest, cols], rho[newest, cols]
    yy = (y_new * y_new).sum(1)
    gamma = torch.where(rho_new > 0, (s_new * y_new).sum(1) / yy.clamp_min(1e-300), torch.ones_like(yy))
    r = gamma[:, None] * q
    for at, alpha in zip(reversed(order), reversed(alphas), strict=True):
        s_j, y_j, rho_j = s[at, cols], y[at, cols], rho[at, cols]
        beta = rho_j * (y_j * r).sum(1)
        r += (alpha - beta)[:, None] * s_j
    return r


def _backtrack(objective: Objective, x: torch.Tensor, value: torch.Tensor, grad: torch.Tensor, slope: torch.Tensor,
               direction: torch.Tensor, step: torch.Tensor, rows: torch.Tensor, c1: float, max_backtracks: int):
    """Per row, the first of step, step/2, step/4 ... that meets the Armijo condition; rows where none
    does keep their point (accepted = False)."""
    new_x, new_value, new_grad = x.clone(), value.clone(), grad.clone()
    accepted = torch.zeros_like(value, dtype=torch.bool)
    trying = torch.arange(x.shape[0], device=x.device)
    for _ in range(max_backtracks):
        trial = x[trying] + step[trying, None] * direction[trying]
        f, g = objective(trial, rows[trying])
        ok = f <= value[trying] + c1 * step[trying] * slope[trying]
        good = trying[ok]
        new_x[good], new_value[good], new_grad[good] = trial[ok], f[ok], g[ok]
        accepted[good] = True
        trying = trying[~ok]
        if trying.numel() == 0:
            break
        step[trying] *= 0.5
    return new_x, new_value, new_grad, accepted
