"""lmlab.scaling: approach 3 against known laws and scipy's L-BFGS-B, approach 2 against closed forms, the
compute-optimal plan against a direct minimisation, the readers' one-line errors, `lmlab scaling fit`'s
JSON, and sweeps/scaling.yaml's recorded points."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.cli.train import train
from lmlab.errors import ArgumentError, InputError
from lmlab.scaling import ScalingLaw, bootstrap_law, count_parameters, fit_isoflops, fit_law, lbfgs, read_points
from lmlab.scaling.budget import throughput_for
from lmlab.scaling.law import HuberLogLoss
from lmlab.scaling.points import Points

TRUE = ScalingLaw.of(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s fit
BUDGETS = np.logspace(18, 21, 4)


def isoflop_points(law=TRUE, budgets=BUDGETS, sizes=7, spread=10.0, noise=0.01, seed=0) -> Points:
    """IsoFLOP profiles of ``law``: per budget, ``sizes`` models from N_opt / spread to N_opt x spread, D =
    C / (6 N), the loss times exp(noise x a standard normal)."""
    rows = [(n, c / (6 * n), c) for c in budgets
            for n in law.optimal(c).params * np.geomspace(1 / spread, spread, sizes)]
    n, d, c = (np.array(v) for v in zip(*rows, strict=True))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return Points(n, d, loss, c, [f"row {i + 2}" for i in range(len(n))], "total", "synthetic")


def write_csv(path, points: Points, columns=("params", "tokens", "loss")) -> str:
    values = {"params": points.params, "tokens": points.tokens, "loss": points.loss, "flops": points.flops}
    lines = [",".join(columns)] + [",".join(repr(float(values[c][i])) for c in columns) for i in range(len(points))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---- approach 3 -----------------------------------------------------------------------------------


def test_fit_recovers_a_known_law_within_its_bootstrap_intervals():
    points = isoflop_points()
    fit = fit_law(points.params, points.tokens, points.loss)
    intervals = bootstrap_law(points.params, points.tokens, points.loss, fit, resamples=300).parameter_intervals()
    for name, width in (("E", 0.5), ("alpha", 0.15), ("beta", 0.15)):
        low, high = intervals[name]
        assert low <= getattr(TRUE, name) <= high, (name, intervals[name])
        assert low <= getattr(fit.law, name) <= high and high - low < width  # informative, not vacuous
    assert fit.converged > 0.9


def test_huber_fit_stays_put_where_least_squares_moves():
    points = isoflop_points(noise=0.002, seed=1)
    loss = points.loss.copy()
    loss[[3, 12, 20]] *= 1.3  # three gross outliers among 28 points
    huber = fit_law(points.params, points.tokens, loss).law
    squares = fit_law(points.params, points.tokens, loss, huber_delta=10.0).law  # quadratic for every residual
    for name in ("E", "alpha", "beta"):
        assert abs(getattr(huber, name) / getattr(TRUE, name) - 1) < 0.03, (name, huber)
    assert abs(squares.beta / TRUE.beta - 1) > 0.2 and abs(squares.E / TRUE.E - 1) > 0.2, squares


def test_batched_lbfgs_reaches_what_scipy_lbfgsb_reaches_start_by_start(one_thread):
    """From the paper's grid points nearest the law, every start ends where scipy's L-BFGS-B (run alone, to
    tight tolerances) ends; over 30 other grid starts the best end is the same."""
    from scipy.optimize import minimize

    points = isoflop_points()
    objective = HuberLogLoss(points.params, points.tokens, points.loss)
    near = torch.tensor(list(itertools.product([5.0, 10.0], [5.0, 10.0], [0.0, 0.5], [0.5], [0.5])))
    from lmlab.scaling.law import grid_starts

    grid = grid_starts()
    others = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))[:30]]
    starts = torch.cat([near.double(), others])
    ours = lbfgs.minimize(objective, starts)

    def value_and_grad(x):
        value, grad = objective(torch.tensor(x)[None], torch.zeros(1, dtype=torch.long))
        return value.item(), grad[0].numpy()

    options = dict(maxiter=15000, ftol=1e-15, gtol=1e-10, maxls=50)  # scipy's defaults stop far too early here
    theirs = [minimize(value_and_grad, x.numpy(), jac=True, method="L-BFGS-B", options=options) for x in starts]
    for i in range(len(near)):
        assert ours.value[i].item() == pytest.approx(theirs[i].fun, rel=1e-9)
        np.testing.assert_allclose(ours.x[i].numpy(), theirs[i].x, atol=1e-4)
    best_ours, best_theirs = int(ours.value.argmin()), int(np.argmin([r.fun for r in theirs]))
    assert ours.value[best_ours].item() == pytest.approx(theirs[best_theirs].fun, rel=1e-9)
    np.testing.assert_allclose(ours.x[best_ours].numpy(), theirs[best_theirs].x, atol=1e-4)


def test_compute_optimal_allocation_is_the_minimum_along_the_budget():
    from scipy.optimize import minimize_scalar

    def loss_along(log_params: float, flops: float) -> float:
        return float(TRUE.loss(math.exp(log_params), flops / (6 * math.exp(log_params))))

    for flops in (1e18, 1e21, 1e24):
        plan = TRUE.optimal(flops)
        along = minimize_scalar(loss_along, args=(flops,), bounds=(0, 60), method="bounded", options={"xatol": 1e-10})
        assert plan.params == pytest.approx(math.exp(along.x), rel=1e-5)
        assert plan.loss == pytest.approx(along.fun, rel=1e-12)
        assert plan.tokens == pytest.approx(flops / (6 * plan.params))
    with pytest.raises(InputError, match="alpha=-0.1"):
        ScalingLaw.of(E=1.0, A=1.0, B=1.0, alpha=-0.1, beta=0.3).optimal(1e20)


# ---- approach 2 -----------------------------------------------------------------------------------


def test_approach2_recovers_exact_parabola_minima_and_exponents():
    """Profiles that are parabolas in log N with minima at N* = 0.2 C^0.46 give back N*, a = 0.46 and, with
    D = C / (6 N), b = 0.54."""
    flops, params, loss = [], [], []
    for c in (1e18, 1e19, 1e20):
        for n in 0.2 * c**0.46 * np.geomspace(0.2, 5, 6):
            flops.append(c), params.append(n), loss.append(2 + 0.05 * np.log(n / (0.2 * c**0.46)) ** 2 + 1e19 / c)
    flops, params = np.array(flops), np.array(params)
    fit = fit_isoflops(flops, params, flops / (6 * params), loss)
    assert fit.a == pytest.approx(0.46, abs=1e-9) and fit.b == pytest.approx(0.54, abs=1e-9)
    for profile in fit.profiles:
        assert profile.params_opt == pytest.approx(0.2 * profile.flops**0.46, rel=1e-9)
        assert profile.loss_opt == pytest.approx(2 + 1e19 / profile.flops, rel=1e-9)


def test_approach2_on_a_known_law_finds_its_exponent_and_leaves_out_edge_minima():
    points = isoflop_points(sizes=9, spread=4.0, noise=0.0)
    fit = fit_isoflops(points.flops, points.params, points.tokens, points.loss)
    a, b = TRUE.exponents
    assert fit.a == pytest.approx(a, abs=0.01) and fit.b == pytest.approx(b, abs=0.01)
    assert all(p.used for p in fit.profiles)
    # sizes all above the optimum: the parabola's minimum lies outside them, so the profile is not used
    c = 1e20
    above = TRUE.optimal(c).params * np.geomspace(3, 30, 5)
    edge = fit_isoflops(np.full(5, c), above, c / (6 * above), TRUE.loss(above, c / (6 * above)))
    assert not edge.profiles[0].used and "outside the sampled sizes" in edge.profiles[0].note
    assert edge.a is None


# ---- reading points -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("params,loss\n1e6,3.0\n", r"no column 'tokens' \(the header has params, loss"),
    ("params,tokens\n1e6,2e7\n", r"no column 'loss'"),
    ("params,tokens,loss\n1e6,2e7,3.0\n2e6,abc,2.9\n", r"row 3, column 'tokens': 'abc' is not a number"),
    ("params,tokens,loss\n-5,2e7,3.0\n", r"row 2, column 'params': -5 must be a finite number > 0"),
    ("params,tokens,loss\n1e6,2e7,0\n", r"row 2, column 'loss': 0 must be a finite number > 0"),
    ("params,tokens,loss\n1e6,2e7,nan\n", r"row 2, column 'loss': nan must be a finite number > 0"),
    ("params,tokens,loss\n1e6,2e7\n", r"row 2, column 'loss': empty"),
])
def test_bad_csv_is_one_line_naming_file_row_and_column(tmp_path, text, message):
    path = tmp_path / "points.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        read_points(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_csv_flops_stand_in_for_tokens_and_extra_columns_are_ignored(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("run,params,flops,loss\nsmall,1e6,6e13,3.5\nlarge,1e7,6e13,3.4\n")
    read = read_points(path)
    np.testing.assert_allclose(read.tokens, [1e7, 1e6])
    np.testing.assert_allclose(read.flops, [6e13, 6e13])
    assert read.names == ["row 2", "row 3"]


def make_run(root, name, params, tokens, flops, loss, status="completed", steps=100, non_embedding=None):
    """A run directory as train.py leaves it: config.yaml with callbacks.scaling, metrics.csv, status.json."""
    run = root / name
    run.mkdir(parents=True)
    scaling = {"_target_": "lmlab.callbacks.scaling.ScalingPoint", "flops": flops, "params": params,
               "non_embedding_params": non_embedding or params // 2, "tokens": tokens}
    config = {"trainer": {"max_steps": steps}, "callbacks": {"scaling": scaling,
                                                             "throughput": {"price_per_device_hour": 2.0}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ["step,train/loss,val/loss,perf/mfu", "9,5.0,,0.2", "49,4.0,,0.3", f"{steps - 1},{loss + 0.1},{loss},"]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "status.json").write_text(json.dumps({"status": status}))
    return run


def test_reads_the_finished_runs_of_a_multirun_and_says_which_it_left_out(tmp_path):
    make_run(tmp_path, "C1e+12_L1", 20000, 8_000_000, 1e12, 3.9)
    make_run(tmp_path, "C1e+12_L2", 60000, 2_800_000, 1e12, 3.8, non_embedding=25000)
    make_run(tmp_path, "C1e+12_L3", 130000, 1_300_000, 1e12, 3.9, status="failed")
    points = read_points(tmp_path)
    assert points.names == ["C1e+12_L1", "C1e+12_L2"] and points.left_out == ["C1e+12_L3 (failed)"]
    np.testing.assert_array_equal(points.params, [20000, 60000])
    np.testing.assert_array_equal(points.loss, [3.9, 3.8])
    np.testing.assert_array_equal(read_points(tmp_path, "non_embedding").params, [10000, 25000])
    assert read_points(tmp_path / "C1e+12_L2").names == ["C1e+12_L2"]  # one run directory


def test_runs_without_a_point_are_one_line(tmp_path):
    make_run(tmp_path / "sweep", "0", 20000, 8_000_000, 1e12, 3.9, status="failed")
    make_run(tmp_path / "sweep", "1", 20000, 8_000_000, 1e12, 3.9, status="running")
    with pytest.raises(InputError, match=r"sweep: no finished run: 0 \(failed\); 1 \(running\)$"):
        read_points(tmp_path / "sweep")
    run = make_run(tmp_path, "short", 20000, 8_000_000, 1e12, 3.9, steps=100)
    (run / "status.json").unlink()  # a single run: finished when its last validation is at its last step
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 200}, "callbacks": {"scaling": {
        "flops": 1e12, "params": 20000, "non_embedding_params": 100, "tokens": 8_000_000}}}))
    with pytest.raises(InputError, match=r"the last val/loss is at step 99, before the run's last step 199"):
        read_points(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 100}}))
    with pytest.raises(InputError, match=r"config.yaml: has no callbacks.scaling node"):
        read_points(run)


def test_fewer_points_than_parameters_is_one_line(tmp_path):
    from lmlab.scaling import run_study

    path = write_csv(tmp_path / "four.csv", isoflop_points(budgets=[1e18], sizes=4))
    with pytest.raises(InputError, match=r"four.csv: 4 points; fitting .* needs at least 5, one per parameter"):
        run_study(read_points(path))


# ---- budgets ---------------------------------------------------------------------------------------


def test_budget_in_hours_and_money_is_flops_at_peak_times_mfu_and_the_price():
    h100 = throughput_for(gpu="NVIDIA H100 80GB HBM3", precision="bf16", mfu=0.4, devices=8, price_per_device_hour=3.0)
    assert h100.flops_per_second == pytest.approx(8 * 989e12 * 0.4)
    assert h100.flops_in(2.0) == pytest.approx(2 * 3600 * 8 * 989e12 * 0.4)
    assert h100.flops_for(24.0) == pytest.approx(h100.flops_in(1.0))  # $24 = 8 device-hours = 1 hour on 8
    with pytest.raises(ArgumentError, match="mfu=null: is needed"):
        throughput_for(gpu="h100")
    with pytest.raises(ArgumentError, match="dollars=5.0: needs the price of a device-hour"):
        throughput_for(gpu="a100", mfu=0.5).flops_for(5.0)
    with pytest.raises(ArgumentError, match="hours=-1: must be a number > 0"):
        h100.flops_in(-1)


# ---- the command line -----------------------------------------------------------------------------


def lmlab(*args: str, cwd) -> subprocess.CompletedProcess:
    script = "import sys; from lmlab.cli.main import main; sys.exit(main())"  # what pip's `lmlab` script runs
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ})


def test_cli_bad_input_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "bad.csv").write_text("params,tokens,loss\n1e6,2e7,3.0\n2e6,1e7,x\n")
    proc = lmlab("scaling", "fit", "bad.csv", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["Error: bad.csv: row 3, column 'loss': 'x' is not a number"]


def test_cli_writes_the_issue_json_plots_and_predictions(tmp_path, capsys):
    from lmlab.cli.scaling import main

    fitted = write_csv(tmp_path / "sweep.csv", isoflop_points(), ("params", "tokens", "flops", "loss"))
    held_out = isoflop_points(budgets=[1e22], sizes=3, spread=2.0, noise=0.0)
    predict = write_csv(tmp_path / "held_out.csv", held_out, ("params", "tokens", "flops", "loss"))
    out = main(["fit", fitted, "--budget-flops", "1e22", "--resamples", "100", "--json", str(tmp_path / "fit.json"),
                "--png-dir", str(tmp_path / "png"), "--predict", predict])
    assert json.loads((tmp_path / "fit.json").read_text()) == json.loads(json.dumps(out))
    assert {"E", "A", "B", "alpha", "beta", "ci", "approach2", "optimal"} <= set(out)
    assert set(out["ci"]) == {"E", "A", "B", "alpha", "beta"}
    assert all(low <= out[name] <= high for name, (low, high) in out["ci"].items())
    assert {"a", "b", "budgets"} <= set(out["approach2"]) and len(out["approach2"]["budgets"]) == 4
    optimal = out["optimal"]
    assert set(optimal) == {"flops", "params", "tokens", "loss", "tokens_per_param"}
    assert optimal["tokens"] == pytest.approx(1e22 / (6 * optimal["params"]))
    assert optimal["tokens_per_param"] == pytest.approx(optimal["tokens"] / optimal["params"])
    assert out["fit"]["params_counted"] == "total" and out["fit"]["starts"] == 4500
    assert optimal["loss"] == pytest.approx(TRUE.optimal(1e22).loss, rel=0.02)
    for row in out["predictions"]:  # 10x beyond the largest fitted budget: within 2% of the law's loss
        assert abs(row["error"]) < 0.02 and row["ci"][0] < row["predicted"] < row["ci"][1]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["frontier.png", "isoflop.png", "residuals.png"]
    printed = capsys.readouterr().out
    assert "compute-optimal for C = 1e+22 FLOPs" in printed and "approach 2: N_opt ∝ C^" in printed


def test_cli_on_runs_fits_the_chosen_jobs_predicts_the_others_and_prices_the_budget(tmp_path):
    """A multirun of four budgets: the fit reads three (--only), predicts the fourth's runs (--predict, shell
    glob), and converts hours and money with the MFU the runs measured (median of their perf/mfu: 0.25) and
    the price they were configured with (2.0 per device-hour): $1 buys half an hour."""
    from lmlab.cli.scaling import main

    points = isoflop_points(sizes=5, spread=4.0, noise=0.002)
    for i, (n, d, c, loss) in enumerate(zip(points.params, points.tokens, points.flops, points.loss, strict=True)):
        make_run(tmp_path / "sweep", f"C{c:.3g}_L{i % 5}", int(n), int(d), float(c), float(loss))
    sweep = tmp_path / "sweep"
    out = main(["fit", str(sweep), "--only", "C1e+18_*", "--only", "C1e+19_*", "--only", "C1e+20_*",
                "--predict", *map(str, sorted(sweep.glob("C1e+21_*"))), "--budget-hours", "1",
                "--budget-dollars", "1", "--resamples", "50"])
    assert out["fit"]["points"] == 15 and len(out["approach2"]["budgets"]) == 3
    assert [row["name"] for row in out["predictions"]] == [f"C1e+21_L{i}" for i in range(5)]
    assert all(abs(row["error"]) < 0.02 for row in out["predictions"])  # 10x beyond the fitted budgets
    budget = out["budget"]
    assert budget["mfu"] == pytest.approx(0.25) and budget["price_per_device_hour"] == 2.0
    assert budget["flops_of_each"]["dollars"] == pytest.approx(budget["flops_of_each"]["hours"] / 2)
    assert budget["binding"] == "dollars" and out["optimal"]["flops"] == budget["flops_of_each"]["dollars"]
    assert budget["flops_of_each"]["hours"] == pytest.approx(3600 * budget["peak_flops"] * 0.25)


def test_cli_budget_in_hours_names_the_missing_flag(tmp_path, capsys):
    from lmlab.cli.scaling import main

    fitted = write_csv(tmp_path / "sweep.csv", isoflop_points(budgets=[1e18, 1e19], sizes=3))
    with pytest.raises(SystemExit) as stop:
        main(["fit", fitted, "--budget-hours", "2", "--gpu", "h100", "--resamples", "10"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().startswith("Error: --mfu=null: is needed")


# ---- the sweep ------------------------------------------------------------------------------------


def sweep_jobs() -> list:
    """The config of every job of `python train.py -m sweep=scaling`, as Hydra's basic sweeper makes them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra

    from lmlab.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        params = compose("train", overrides=["sweep=scaling"], return_hydra_config=True).hydra.sweeper.params
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        jobs = [compose("train", overrides=["sweep=scaling", *job])
                for job in BasicSweeper.split_arguments(parsed, None)[0]]
    GlobalHydra.instance().clear()
    return jobs


def test_scaling_sweep_records_n_d_and_c_of_every_job():
    """Each job of the sweep's grid records N, both ways, as the model built from its config counts them,
    D = max_steps x tokens per step, and C = 6 N D up to half a step; width and heads follow depth; the one
    validation is at the end."""
    jobs = sweep_jobs()
    assert [job.model.n_layer for job in jobs] == [1, 2, 3, 4, 5]
    for job in jobs:
        point, model_cfg = job.callbacks.scaling, job.model
        model = instantiate(model_cfg)
        total = sum(p.numel() for p in model.parameters())
        assert (point.params, point.non_embedding_params) == (total, total - model.wte.weight.numel())
        assert count_parameters(model) == (total, total - model.wte.weight.numel())
        assert model_cfg.n_embd == 16 * model_cfg.n_layer and model_cfg.n_head == model_cfg.n_layer
        per_step = job.data.batch_size * job.data.block_size
        assert point.tokens == job.trainer.max_steps * per_step and job.trainer.max_steps > job.sched.warmup_steps
        assert abs(6 * point.params * point.tokens - point.flops) <= 6 * point.params * per_step / 2
        assert job.trainer.val_check_interval == job.trainer.max_steps and point.flops == 1e12


def test_a_scaling_point_that_does_not_describe_its_run_stops_it_before_any_work(make_cfg, tmp_path):
    cfg = make_cfg("sweep=scaling", "trainer.accumulate_grad_batches=2")
    with pytest.raises(InputError, match=r"callbacks.scaling.tokens=1536: the run trains 6 steps x 512 tokens per "
                                         r"step = 3072"):
        train(cfg)
    assert OmegaConf.select(cfg, "callbacks.scaling.flops") == 1e12
    assert not (tmp_path / "run").exists()  # refused before the run directory was written


def test_the_sweep_file_names_its_commands():
    header = (ROOT / "sweeps" / "scaling.yaml").read_text()
    assert "python train.py -m sweep=scaling callbacks.scaling.flops=4.64e12 model.n_layer=2,3,4,5,6" in header
    assert "lmlab scaling fit logs/scaling/isoflop" in header


def test_lmlab_report_of_a_scaling_sweep_shows_its_fit(tmp_path):
    from lmlab.report import write_report

    points = isoflop_points(sizes=5, spread=4.0, noise=0.002)
    for i, (n, d, c, loss) in enumerate(zip(points.params, points.tokens, points.flops, points.loss, strict=True)):
        make_run(tmp_path / "sweep", f"C{c:.3g}_L{i % 5}", int(n), int(d), float(c), float(loss))
    page = write_report(tmp_path / "sweep").read_text()
    assert all(f'<figure id="scaling_{name}">' in page for name in ("isoflop", "frontier", "residuals"))
