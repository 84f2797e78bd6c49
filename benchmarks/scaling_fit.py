"""Time approach 3's fit: every start of the paper's grid at once (lmlab.scaling) against a loop of
scipy L-BFGS-B calls, one per start, on the same points.

    python benchmarks/scaling_fit.py [--points 300] [--scipy-starts 100]   # scipy on a sample, extrapolated
    python benchmarks/scaling_fit.py --scipy-starts 4500                    # the whole grid in scipy (minutes)
    python benchmarks/scaling_fit.py --smoke                                # seconds: checks the script runs

The points are IsoFLOP profiles of Hoffmann et al.'s fitted law with 1% noise (ten budgets, 1e18 to 1e22
FLOPs). The batched fit runs every grid start; scipy runs a seeded random sample of them (tight
tolerances: its defaults stop after a few iterations on this objective) and its time per start is
extrapolated to the grid. Both best ends over the sample are compared. Times are wall-clock seconds
on one thread (the batched fit uses one; scipy is single-threaded Python).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lmlab.scaling.law import HuberLogLoss, ScalingLaw, fit_law, grid_starts
from lmlab.scaling.lbfgs import minimize

LAW = ScalingLaw.of(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
SCIPY_OPTIONS = dict(maxiter=15000, ftol=1e-15, gtol=1e-10, maxls=50)


def points(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flops = np.repeat(np.logspace(18, 22, 10), -(-count // 10))[:count]
    optimal = LAW.optimal_params(flops)
    params = optimal * np.exp(rng.uniform(np.log(1 / 8), np.log(8), count))
    tokens = flops / (6 * params)
    return params, tokens, LAW.loss(params, tokens) * np.exp(rng.normal(0, 0.01, count))


def scipy_loop(objective: HuberLogLoss, starts: torch.Tensor) -> tuple[float, list]:
    from scipy.optimize import minimize as scipy_minimize

    def value_and_grad(x):
        value, grad = objective(torch.from_numpy(x)[None], torch.zeros(1, dtype=torch.long))
        return value.item(), grad[0].numpy()

    start = time.perf_counter()
    results = [scipy_minimize(value_and_grad, x.numpy(), jac=True, method="L-BFGS-B", options=SCIPY_OPTIONS)
               for x in starts]
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--scipy-starts", type=int, default=100, help="grid starts scipy runs (4500: all)")
    parser.add_argument("--smoke", action="store_true", help="20 points, 60 starts, 3 in scipy")
    args = parser.parse_args(argv)
    n_points, scipy_count = (20, 3) if args.smoke else (args.points, args.scipy_starts)
    torch.set_num_threads(1)
    params, tokens, loss = points(n_points)
    grid = grid_starts()
    starts = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))[:60]] if args.smoke else grid

    begin = time.perf_counter()
    fit = fit_law(params, tokens, loss, starts=starts)
    batched_seconds = time.perf_counter() - begin

    objective = HuberLogLoss(params, tokens, loss)
    sample = starts[torch.randperm(len(starts), generator=torch.Generator().manual_seed(1))[:scipy_count]]
    scipy_seconds, scipy_results = scipy_loop(objective, sample)
    ours = minimize(objective, sample)
    best_scipy = min(r.fun for r in scipy_results)
    result = {
        "benchmark": "scaling_fit",
        "points": n_points,
        "starts": len(starts),
        "threads": torch.get_num_threads(),
        "batched_seconds": batched_seconds,
        "batched_converged": fit.converged,
        "scipy_starts": len(sample),
        "scipy_seconds": scipy_seconds,
        "scipy_seconds_per_start": scipy_seconds / len(sample),
        "scipy_seconds_for_all_starts": scipy_seconds / len(sample) * len(starts),
        "speedup": scipy_seconds / len(sample) * len(starts) / batched_seconds,
        "sample_best_objective": {"batched": float(ours.value.min()), "scipy": float(best_scipy)},
        "fit": {"E": fit.law.E, "alpha": fit.law.alpha, "beta": fit.law.beta, "objective": fit.objective},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
