"""L-BFGS on many independent small problems at once: one tensor row per problem, each with its own
curvature history, step length and stopping test.

A scaling-law fit minimises the same 5-parameter objective from thousands of starting points (and again
for every bootstrap resample). One ``scipy.optimize.minimize`` call per start spends its time in Python;
here every iteration evaluates the objective of all unfinished problems in one batched call, so the cost
is that of a few hundred tensor operations instead of a few hundred thousand small ones. The problems
stay independent: nothing about one row (history, step, convergence) depends on another, so a row's
iterates are those this algorithm takes on its problem alone. (tests/test_scaling.py checks rows against
scipy's L-BFGS-B from the same starts: the same minimum from the grid points near the law, the same best
end over a sample of the grid; from far starts the two line searches may lead to different local minima.)

The line search finds a step meeting the strong Wolfe conditions (sufficient decrease c1 = 1e-4, curvature
c2 = 0.9) by bracketing and zooming with cubic interpolation (Nocedal & Wright, algorithms 3.5-3.6, as
torch.optim.LBFGS's ``strong_wolfe``), from the unit step (the first iteration from 1 / ‖g‖₁). A pair
(s, y) whose curvature s·y is not positive is not used, which keeps the inverse-Hessian estimate positive
definite (its slot stays empty, so such a row remembers one pair fewer for a while).
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


def minimize(objective: Objective, x0: torch.Tensor, max_iter: int = 1000, memory: int = 10,
             gtol: float = 1e-10, ftol: float = 1e-12, c1: float = 1e-4, c2: float = 0.9,
             max_line_search: int = 25) -> BatchResult:
    """Minimise every row of ``x0`` [n, p] independently.

    A problem stops when its largest gradient component is at most ``gtol``, or when an iteration lowers
    its objective by at most ``ftol`` x |f| (relative: the objectives here are sums of tiny Huber terms,
    where an absolute tolerance would stop far from the minimum).

    Runs on one intra-op thread (restored afterwards): the tensors are many and small, and two threads
    made a 300-point fit 8x slower on an idle 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _minimize(objective, x0, max_iter, memory, gtol, ftol, c1, c2, max_line_search)
    finally:
        torch.set_num_threads(threads)


def _minimize(objective, x0, max_iter, memory, gtol, ftol, c1, c2, max_line_search) -> BatchResult:
    x = x0.clone()
    n, p = x.shape
    everyone = torch.arange(n, device=x.device)
    value, grad = objective(x, everyone)
    # the curvature pairs, newest at slot head - 1: every unfinished problem adds one pair per iteration (an
    # empty one, rho = 0, when it keeps none), and a finished problem never reads its slots again
    s_hist, y_hist, rho = x.new_zeros(memory, n, p), x.new_zeros(memory, n, p), x.new_zeros(memory, n)
    gamma = torch.ones_like(value)  # H0 = gamma I, from the newest pair kept
    fresh = torch.ones_like(value, dtype=torch.bool)  # no pair kept since the start (or a restart)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    converged = grad.abs().amax(1) <= gtol
    active = ~converged
    head = 0

    for _ in range(max_iter):
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        g = grad[rows]
        order = [(head - 1 - j) % memory for j in range(memory)]  # newest first
        pairs = [(s_hist[j, rows], y_hist[j, rows], rho[j, rows]) for j in order]
        direction = -_two_loop(g, pairs, gamma[rows])
        slope = (g * direction).sum(1)
        uphill = slope >= 0  # cannot happen with a positive definite estimate, but rounding: restart from -g
        if uphill.any():
            direction[uphill] = -g[uphill]
            slope[uphill] = -(g[uphill] ** 2).sum(1)
            rho[:, rows[uphill]] = 0
            fresh[rows[uphill]] = True
        step = torch.where(fresh[rows], torch.clamp(1.0 / g.abs().sum(1), max=1.0), torch.ones_like(slope))

        new_x, new_value, new_grad, accepted = _strong_wolfe(objective, x[rows], value[rows], g, slope, direction,
                                                             step, rows, c1, c2, max_line_search)
        s, y = new_x - x[rows], new_grad - g
        curvature = (s * y).sum(1)
        keep = accepted & (curvature > 1e-12 * s.norm(dim=1) * y.norm(dim=1))
        s_hist[head, rows], y_hist[head, rows] = s, y
        rho[head, rows] = torch.where(keep, 1.0 / curvature, torch.zeros_like(curvature))
        gamma[rows] = torch.where(keep, curvature / (y * y).sum(1).clamp_min(1e-300), gamma[rows])
        fresh[rows] &= ~keep
        head = (head + 1) % memory

        decrease = value[rows] - new_value
        x[rows], value[rows], grad[rows] = new_x, new_value, new_grad
        iterations[rows] += 1
        done = (new_grad.abs().amax(1) <= gtol) | (accepted & (decrease <= ftol * new_value.abs()))
        converged[rows] = done
        active[rows] = ~done & accepted  # a failed line search: no lower point along a descent direction
    return BatchResult(x, value, iterations, converged)


def _two_loop(g: torch.Tensor, pairs: list, gamma: torch.Tensor) -> torch.Tensor:
    """H·g by the two-loop recursion over ``pairs`` (s, y, rho), newest first; empty pairs (rho = 0)
    contribute nothing; H0 = gamma I."""
    q = g.clone()
    alphas = []
    for s, y, rho in pairs:
        alpha = rho * (s * q).sum(1)
        q -= alpha[:, None] * y
        alphas.append(alpha)
    r = gamma[:, None] * q
    for (s, y, rho), alpha in zip(reversed(pairs), reversed(alphas), strict=True):
        beta = rho * (y * r).sum(1)
        r += (alpha - beta)[:, None] * s
    return r


def _cubic_minimum(t1, f1, d1, t2, f2, d2, low, high):
    """The minimiser of the cubic through (t, f, df/dt) at t1 and t2, clipped to [low, high]; the middle of
    [low, high] where the cubic has none."""
    theta = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    square = theta**2 - d1 * d2
    root = square.clamp(min=0).sqrt()
    ascending = t1 <= t2
    at = torch.where(ascending, t2 - (t2 - t1) * ((d2 + root - theta) / (d2 - d1 + 2 * root)),
                     t1 - (t1 - t2) * ((d1 + root - theta) / (d1 - d2 + 2 * root)))
    middle = (low + high) / 2
    return torch.where((square >= 0) & torch.isfinite(at), torch.minimum(torch.maximum(at, low), high), middle)


def _strong_wolfe(objective: Objective, x: torch.Tensor, f0: torch.Tensor, g0: torch.Tensor, slope0: torch.Tensor,
                  direction: torch.Tensor, step: torch.Tensor, rows: torch.Tensor, c1: float, c2: float,
                  max_evaluations: int, tolerance_change: float = 1e-9):
    """Per row, a step along ``direction`` meeting the strong Wolfe conditions; returns (x, f, g, accepted)
    at the best step found (accepted = False where it is no lower than the start).

    Every row runs the same state machine (grow the step until a bracket is found, then zoom into it);
    its state is a tuple (t, f, g, df/dt) per point kept, updated by masks without indexing."""
    scale = direction.abs().amax(1)
    start = (torch.zeros_like(step), f0, g0, slope0)
    prev = low = high = out = start  # the last point of the growing phase; the zoom's bracket; the result
    t = step
    zooming = torch.zeros_like(step, dtype=torch.bool)
    searching = torch.ones_like(zooming)
    stuck = torch.zeros_like(zooming)  # the zoom made too little progress last time

    for evaluation in range(max_evaluations):
        zoom = searching & zooming  # the zoom's next trial: cubic between the bracket ends, 10% from its ends
        if zoom.any():
            tiny = zoom & ((high[0] - low[0]).abs() * scale < tolerance_change)
            out, searching, zoom = _pick(tiny, low, out), searching & ~tiny, zoom & ~tiny
            lo, hi = torch.minimum(low[0], high[0]), torch.maximum(low[0], high[0])
            trial = _cubic_minimum(low[0], low[1], low[3], high[0], high[1], high[3], lo, hi)
            eps = 0.1 * (hi - lo)
            near_end = torch.minimum(hi - trial, trial - lo) < eps
            move = near_end & (stuck | (trial >= hi) | (trial <= lo))
            moved = torch.where((trial - hi).abs() < (trial - lo).abs(), hi - eps, lo + eps)
            t = torch.where(zoom, torch.where(move, moved, trial), t)
            stuck = torch.where(zoom, near_end & ~move, stuck)
        todo = searching.nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        f, g = objective(x[todo] + t[todo, None] * direction[todo], rows[todo])
        new_f, new_g = f0.index_copy(0, todo, f), g0.index_copy(0, todo, g)
        new = (t, new_f, new_g, (new_g * direction).sum(1))
        armijo_fails = new_f > f0 + c1 * t * slope0
        curvature_ok = new[3].abs() <= -c2 * slope0

        # growing: a bracket is found, the step is good, or the step grows (cubic extrapolation)
        grow = searching & ~zooming
        bracketed = grow & (armijo_fails | ((evaluation > 1) & (new_f >= prev[1])) | (~curvature_ok & (new[3] >= 0)))
        good = grow & ~bracketed & curvature_ok
        out, searching = _pick(good, new, out), searching & ~good
        prev_lower = prev[1] <= new_f
        low = _pick(bracketed, _pick(prev_lower, prev, new), low)
        high = _pick(bracketed, _pick(prev_lower, new, prev), high)
        zooming = zooming | bracketed
        grow = grow & ~bracketed & ~good
        grown = _cubic_minimum(prev[0], prev[1], prev[3], t, new_f, new[3], t + 0.01 * (t - prev[0]), 10 * t)
        prev = _pick(grow, new, prev)

        # zoom: the trial replaces an end of the bracket
        above = zoom & (armijo_fails | (new_f >= low[1]))
        high = _pick(above, new, high)
        swap = above & (high[1] < low[1])
        low, high = _pick(swap, high, low), _pick(swap, low, high)
        below = zoom & ~above
        reverse = below & ~curvature_ok & (new[3] * (high[0] - low[0]) >= 0)
        high = _pick(reverse, low, high)
        low = _pick(below, new, low)
        done = below & curvature_ok
        out, searching = _pick(done, new, out), searching & ~done
        t = torch.where(grow, grown, t)

    # out of evaluations: a growing step's last point if it is lower than the start, the zoom's low end
    growing = searching & ~zooming
    out = _pick(growing & (prev[1] < f0), prev, out)
    out = _pick(searching & zooming, low, out)
    accepted = out[1] < f0
    return x + out[0][:, None] * direction, out[1], out[2], accepted


def _pick(mask: torch.Tensor, a: tuple, b: tuple) -> tuple:
    """The state ``a`` where ``mask`` holds, ``b`` elsewhere (states: (t, f, g [k, p], slope))."""
    return tuple(torch.where(mask[:, None] if x.dim() == 2 else mask, x, y) for x, y in zip(a, b, strict=True))
