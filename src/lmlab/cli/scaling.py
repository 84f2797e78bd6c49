"""`lmlab scaling fit PATH [--budget-flops C | --budget-hours H | --budget-dollars $] [--json FILE] [--png-dir DIR]`

Fits scaling laws to the runs of a scaling sweep (a multirun directory of sweeps/scaling.yaml, or one run
directory) or to a CSV with columns params,tokens,loss: approach 3 of Hoffmann et al. (the parametric
L(N, D) = E + A / N^alpha + B / D^beta, Huber loss on log L, L-BFGS from the paper's grid of starts) with
bootstrap intervals, and approach 2 (a parabola through each IsoFLOP profile, power laws through their
minima). With a budget it plans the compute-optimal run: N_opt, D_opt = C / (6 N_opt), the loss the law
predicts and tokens per parameter; hours and money become FLOPs at the measured throughput (peak FLOP/s x
MFU) and the price per device-hour that `lmlab cost` uses. `--predict PATH` compares the law's prediction
with runs left out of the fit (the held-out test of a scaling law).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmlab.cli.user_errors import one_line_errors
from lmlab.cost import format_quantity
from lmlab.errors import ArgumentError

# the library's parameter names as this command's flags, for its error messages
FLAGS = {"flops": "--budget-flops", "hours": "--budget-hours", "dollars": "--budget-dollars", "mfu": "--mfu",
         "gpu": "--gpu", "precision": "--precision", "devices": "--devices", "price_per_device_hour": "--price",
         "resamples": "--resamples", "level": "--level", "seed": "--seed"}


def positive(kind=float):
    """An argparse type: a number > 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="lmlab scaling", description="Scaling laws: fit a sweep, plan a budget.")
    commands = top.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit L(N, D) to runs or a CSV; plan a compute-optimal run",
                              description=__doc__.split("\n\n")[1])
    fit.add_argument("path", help="a multirun directory of sweeps/scaling.yaml, one run directory, or a CSV file "
                                  "with columns params,tokens,loss (or params,flops,loss)")
    fit.add_argument("--params", choices=("total", "non_embedding"), default="total",
                     help="N counts every parameter (default; C = 6 N D holds for it) or leaves out the "
                          "embedding tables (Kaplan et al.)")
    budget = fit.add_argument_group("budget (when several are given, the smallest in FLOPs binds)")
    budget.add_argument("--budget-flops", type=positive(), metavar="C", help="training compute in FLOPs")
    budget.add_argument("--budget-hours", type=positive(), metavar="H", help="wall-clock hours on --devices devices")
    budget.add_argument("--budget-dollars", type=positive(), metavar="$", help="money, at --price per device-hour")
    machine = fit.add_argument_group("throughput and price for hours and money")
    machine.add_argument("--gpu", help="a GPU of lmlab.cost.PEAK_FLOPS (h100, a100, l4...); default: this machine")
    machine.add_argument("--precision", choices=("bf16", "fp16", "tf32", "fp32"), default="bf16",
                         help="matmul precision of a GPU's peak (CPU: fp32)")
    machine.add_argument("--mfu", type=positive(), help="fraction of the peak that training reaches; default: the "
                                                   "median perf/mfu of the runs (needed with --gpu or a CSV)")
    machine.add_argument("--price", type=positive(), help="money per device-hour; default: the runs' "
                                                     "callbacks.throughput.price_per_device_hour")
    machine.add_argument("--devices", type=positive(int), default=1, help="devices training together (default 1)")
    fit.add_argument("--only", action="append", metavar="GLOB", help="fit only the jobs of PATH whose directory "
                                                                     "matches (repeatable), e.g. 'C1e+12_*'")
    fit.add_argument("--predict", nargs="+", metavar="PATH", help="runs (or CSVs) left out of the fit: their "
                                                                  "measured loss against the prediction and its "
                                                                  "interval")
    fit.add_argument("--resamples", type=positive(int), default=1000, help="bootstrap resamples (default 1000)")
    fit.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    fit.add_argument("--json", metavar="FILE", help="write the result as one JSON object")
    fit.add_argument("--png-dir", metavar="DIR", help="write isoflop.png, frontier.png and residuals.png")
    return top


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    with one_line_errors(composing=False):
        try:
            result = fit(args)
        except ArgumentError as e:
            raise as_flags(e) from None
    return result


def fit(args: argparse.Namespace) -> dict:
    from lmlab.scaling.analysis import run_study, study_json
    from lmlab.scaling.points import join_points, read_points

    points = read_points(args.path, args.params, args.only)
    predicted = join_points([read_points(path, args.params) for path in args.predict]) if args.predict else None
    budget = plan_budget(args)  # before the fit: a mistake in the budget's flags costs no time
    study = run_study(points, resamples=args.resamples, level=args.level, seed=args.seed)
    result = study_json(study, budget, predicted)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.png_dir:
        write_pngs(study, args, predicted)
    print(summary(result))
    return result


def plan_budget(args: argparse.Namespace) -> dict | None:
    """The budget in FLOPs (the smallest of those given) and how it was reached; None without a budget."""
    from lmlab.scaling.budget import throughput_for

    given = {"flops": args.budget_flops, "hours": args.budget_hours, "dollars": args.budget_dollars}
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return None
    buys, info = {}, {}
    if "flops" in given:
        buys["flops"] = given["flops"]
    if "hours" in given or "dollars" in given:
        path = Path(args.path)
        throughput = throughput_for(gpu=args.gpu, precision=args.precision, mfu=args.mfu, devices=args.devices,
                                    price_per_device_hour=args.price, runs=str(path) if path.is_dir() else None)
        if "hours" in given:
            buys["hours"] = throughput.flops_in(given["hours"])
        if "dollars" in given:
            buys["dollars"] = throughput.flops_for(given["dollars"])
        info = {"device": args.gpu or "this machine", "peak_flops": throughput.peak_flops, "mfu": throughput.mfu,
                "devices": throughput.devices, "price_per_device_hour": throughput.price_per_device_hour}
    binding = min(buys, key=buys.get)
    return {"flops": buys[binding], "binding": binding, "given": given, "flops_of_each": buys, **info}


def write_pngs(study, args: argparse.Namespace, predicted) -> None:
    from lmlab.scaling.plots import figures

    out = Path(args.png_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_flops  # the planned budget is marked when given in FLOPs
    for name, figure in figures(study, budget, predicted).items():
        figure.savefig(out / f"{name}.png", dpi=100)


def as_flags(error: ArgumentError) -> ArgumentError:
    """The library's error with its parameters named as this command's flags."""
    rule = error.rule
    for name in error.others:
        rule = rule.replace("{" + name + "}", "{" + FLAGS.get(name, name) + "}")
    return ArgumentError(FLAGS.get(error.name, error.name), error.value, rule,
                         **{FLAGS.get(k, k): v for k, v in error.others.items()})


def summary(result: dict) -> str:
    fit = result["fit"]
    q = format_quantity
    lines = [f"{fit['points']} points from {fit['source']} (N = {fit['params_counted'].replace('_', '-')} "
             f"parameters); {fit['starts']} starts ({fit['converged_starts']:.0%} converged) in "
             f"{fit['seconds']['fit']:.1f} s, {fit['resamples']} bootstrap resamples in "
             f"{fit['seconds']['bootstrap']:.1f} s",
             f"approach 3: L(N, D) = E + A / N^alpha + B / D^beta, {fit['level']:.0%} intervals"]
    if fit["left_out"]:
        lines.insert(1, f"left out {len(fit['left_out'])} unfinished runs: {', '.join(fit['left_out'])}")
    for name in ("E", "A", "B", "alpha", "beta"):
        low, high = result["ci"][name]
        lines.append(f"  {name:<6} {result[name]:10.4g}   [{low:.4g}, {high:.4g}]")
    a3 = result["approach3"]
    lines.append(f"  N_opt ∝ C^{a3['a']:.3f} [{a3['ci']['a'][0]:.3f}, {a3['ci']['a'][1]:.3f}], "
                 f"D_opt ∝ C^{a3['b']:.3f} [{a3['ci']['b'][0]:.3f}, {a3['ci']['b'][1]:.3f}]")
    a2 = result["approach2"]
    used = sum(b["used"] for b in a2["budgets"])
    lines.append("approach 2: " + (f"N_opt ∝ C^{a2['a']:.3f}, D_opt ∝ C^{a2['b']:.3f}" if a2["a"] is not None
                                   else "no exponents (fewer than two usable IsoFLOP profiles)")
                 + f" ({used} of {len(a2['budgets'])} budgets)")
    for b in a2["budgets"]:
        found = (f"N_opt {q(b['params'])}, D_opt {q(b['tokens'])}, loss {b['loss']:.4f}" if b["params"] is not None
                 else "no minimum")
        lines.append(f"  C = {b['flops']:.3g}: {found} ({b['points']} points)" + (f"; {b['note']}" if "note" in b
                                                                                  else ""))
    if "optimal" in result:
        o, ci, budget = result["optimal"], result["optimal_ci"], result["budget"]
        lines.append(f"compute-optimal for C = {o['flops']:.3g} FLOPs (binding: {budget['binding']}):")
        lines.append(f"  N_opt {q(o['params'])} [{q(ci['params'][0])}, {q(ci['params'][1])}], D_opt {q(o['tokens'])} "
                     f"[{q(ci['tokens'][0])}, {q(ci['tokens'][1])}], {o['tokens_per_param']:.1f} tokens per "
                     f"parameter, loss {o['loss']:.4f} [{ci['loss'][0]:.4f}, {ci['loss'][1]:.4f}]")
    for row in result.get("predictions", []):
        low, high = row["ci"]
        lines.append(f"predicted {row['name']}: N {q(row['params'])}, D {q(row['tokens'])}: measured "
                     f"{row['loss']:.4f}, predicted {row['predicted']:.4f} [{low:.4f}, {high:.4f}] "
                     f"({row['error']:+.2%})")
    return "\n".join(lines)
