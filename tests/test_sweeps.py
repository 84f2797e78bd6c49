"""Multiruns at scale: failing jobs, W&B grouping, re-runs, submitit, Optuna, global batch, early stopping."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from helpers import column, finished_wandb_records, read_metrics, rows_with
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lmlab.cli import CONF_DIR, REPO_ROOT, report, run_names
from lmlab.cli.train import train
from lmlab.errors import InputError

SWEEPS = REPO_ROOT / "sweeps"


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


def wandb_run(job_dir: Path) -> dict:
    """Name, group, tags and exit code of the one offline W&B run of a job, from its record file."""
    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {}
    for record in finished_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out |= {"name": record.run.display_name, "group": record.run.run_group, "tags": list(record.run.tags)}
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_a_failing_job_costs_no_other_job_and_a_rerun_skips_the_finished(run_train_py, tmp_path):
    sweep_dir = tmp_path / "grid"
    # job 1 fails while it trains (a config no job could run with stops the sweep before it starts, below)
    args = ("logger=wandb", "callbacks=none", "+callbacks.boom._target_=helpers.RaiseAtStep",
            "+callbacks.boom.step=99,2,98", "trainer.max_steps=4")
    proc = run_train_py(*args, run_dir=sweep_dir, multirun=True, returncode=1)
    # the failure is summarised at the end, one line per failed job, and its traceback is in its log
    assert "1 of 3 jobs failed" in proc.stderr
    assert re.search(r"job 1 \(\+callbacks.boom.step=2\): RuntimeError: deliberate failure at step 2 "
                     r"\(log: .*1/train.log\)", proc.stderr)
    assert "Traceback" in (sweep_dir / "1" / "train.log").read_text()
    failed = status(sweep_dir / "1")
    assert failed["status"] == "failed" and "deliberate failure at step 2" in failed["error"]
    # the other two ran to the end: metrics, the returned metric, one W&B run each, named and grouped
    for job, step in (("0", "99"), ("2", "98")):
        done = status(sweep_dir / job)
        val = column(read_metrics(sweep_dir / job), "val/loss")
        assert done["status"] == "completed" and done["metric"] == pytest.approx(val[-1], rel=1e-6)
        assert wandb_run(sweep_dir / job) == {"name": f"+callbacks.boom.step={step}", "group": "train-grid",
                                              "tags": [f"+callbacks.boom.step={step}"], "exit_code": 0}
    # the report labels the jobs by what was swept and lists the failed one
    page = report.write_report(sweep_dir).read_text()
    assert "<td>+callbacks.boom.step=99</td><td>completed</td>" in page
    assert "<td>+callbacks.boom.step=2</td><td>failed: RuntimeError: deliberate failure at step 2</td>" in page

    before = {job: (sweep_dir / job / "metrics.csv").read_bytes() for job in ("0", "2")}
    # another command's job in the same directory, written while this one runs: not this sweep's to count
    other = sweep_dir / "lion_lr0.001" / "status.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"job": 0, "status": "failed", "error": "not ours", "launch": "another-command"}))
    os.utime(other, (time.time() + 3600,) * 2)
    proc = run_train_py(*args, run_dir=sweep_dir, multirun=True, returncode=1)
    output = proc.stdout + proc.stderr
    assert output.count("completed before: skipped") == 2 and "1 of 3 jobs failed" in proc.stderr
    assert "3 jobs, 2 completed (2 of them before, skipped), 1 failed" in output and "not ours" not in output
    for job in ("0", "2"):
        assert (sweep_dir / job / "metrics.csv").read_bytes() == before[job]  # not trained again
        assert len(list((sweep_dir / job / "wandb").glob("offline-run-*"))) == 1


def test_wandb_run_of_a_job_failing_mid_training_is_marked_failed(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb", "callbacks=none", "+callbacks.boom._target_=helpers.RaiseAtStep",
                   "+callbacks.boom.step=2", run_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match="deliberate failure at step 2"):
        train(cfg)
    run = wandb_run(tmp_path / "run")
    assert run["exit_code"] == 1
    # a single run is named by its overrides too, and every tag fits W&B's 64 characters
    assert run["name"].startswith("data=text_files") and "+callbacks.boom.step=2" in run["tags"]
    assert run["group"] == "" and all(len(tag) <= 64 for tag in run["tags"])


def test_run_names_come_from_the_swept_overrides_or_the_named_job_directory(make_cfg, tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"group": "optimizer_lr-lr_search", "swept": ["optimizer.lr"]}))
    make_cfg("hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}", "optimizer=lion", "optimizer.lr=0.00123456",
             run_dir=tmp_path / "3")
    assert run_names.run_name() == "optimizer.lr=0.001235" and run_names.run_tags() == ["optimizer.lr=0.001235"]
    assert run_names.run_group() == "optimizer_lr-lr_search"
    make_cfg("hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}", "optimizer=lion", "optimizer.lr=1e-3",
             run_dir=tmp_path / "lion_lr0.001")
    assert run_names.run_name() == "lion_lr0.001"  # the sweep names its job directories: so are the runs


@pytest.mark.slow
def test_rerun_resumes_an_interrupted_job_from_its_checkpoint(run_train_py, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ("callbacks=model_checkpoint", "+callbacks.stop._target_=helpers.SigtermAtStep",
            "+callbacks.stop.step=100,3", "trainer.max_steps=6")
    run_train_py(*args, run_dir=sweep_dir, multirun=True, returncode=143)  # SIGTERM stops the sweep
    assert status(sweep_dir / "0")["status"] == "completed" and status(sweep_dir / "1")["status"] == "running"
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()

    proc = run_train_py(*args, run_dir=sweep_dir, multirun=True)
    assert "job 0 (+callbacks.stop.step=100) completed before: skipped" in proc.stdout + proc.stderr
    assert status(sweep_dir / "1")["status"] == "completed"
    assert sorted(read_metrics(sweep_dir / "1")["train/loss"]) == list(range(6))  # 0-2 before, 3-5 after
    assert rows_with(sweep_dir / "1", "train/loss") == 6  # none logged twice


def test_optuna_trials_in_submitit_processes_a_failed_one_included(run_train_py, tmp_path):
    """Optuna (3 trials at once, one failing while it trains) launched by submitit_local: every trial its own
    process. (A value no job could run with stops the sweep before any trial: see below.)"""
    sweep_dir = tmp_path / "optuna"
    proc = run_train_py("hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3",
                        "hydra.sweeper.n_jobs=3", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                        "+callbacks.boom._target_=helpers.RaiseAtStep", "+callbacks.boom.step=choice(99,2,98)",
                        "callbacks=none", "trainer.max_steps=3", run_dir=sweep_dir, multirun=True, returncode=1)
    jobs = {}
    for job_dir in (d for d in sweep_dir.iterdir() if (d / "status.json").is_file()):
        step = next(o for o in status(job_dir)["overrides"] if o.startswith("+callbacks.boom.step="))
        jobs[step.split("=")[1]] = status(job_dir) | {"dir": job_dir}
    assert {k: v["status"] for k, v in jobs.items()} == {"99": "completed", "2": "failed", "98": "completed"}
    for step in ("99", "98"):
        val = column(read_metrics(jobs[step]["dir"]), "val/loss")
        assert jobs[step]["metric"] == pytest.approx(val[-1], rel=1e-6)
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 3  # one submitit process per trial
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(jobs["99"]["metric"], jobs["98"]["metric"]))
    assert results["best_params"]["+callbacks.boom.step"] != 2
    assert "1 of 3 jobs failed" in proc.stderr and "(+callbacks.boom.step=2)" in proc.stderr


def run_tokens(run_dir: Path) -> tuple[dict, float]:
    """(the global batch as logged at the start, tokens seen at the end)."""
    metrics = read_metrics(run_dir)
    logged = {k: column(metrics, f"train/{k}")[0] for k in ("global_batch", "accumulate_grad_batches", "world_size")}
    return logged, column(metrics, "train/tokens")[-1]


def test_global_batch_sets_accumulation_on_one_device(make_cfg, tmp_path, capsys):
    cfg = make_cfg("data.global_batch_size=16", "data.batch_size=4", "trainer.max_steps=2", "sched.warmup_steps=1",
                   "callbacks=summary", "trainer.log_every_n_steps=1")
    train(cfg)
    assert re.search(r"global batch \(sequences\)[\s│]+16 = 4 x 4 accumulated x 1 devices", capsys.readouterr().out)
    batch, tokens = run_tokens(tmp_path / "run")
    assert batch == {"global_batch": 16, "accumulate_grad_batches": 4, "world_size": 1}
    assert tokens == 2 * 16 * cfg.data.block_size  # 2 optimizer steps of 4 micro batches of 4 sequences
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["trainer"]["accumulate_grad_batches"] == 4


@pytest.mark.ddp
def test_global_batch_sets_accumulation_for_two_processes(make_cfg, tmp_path):
    cfg = make_cfg("trainer=ddp_spawn", "trainer.accelerator=cpu", "data.global_batch_size=16",
                   "data.batch_size=4", "trainer.max_steps=2", "sched.warmup_steps=1", "callbacks=summary",
                   "trainer.log_every_n_steps=1")
    train(cfg)
    batch, tokens = run_tokens(tmp_path / "run")
    assert batch == {"global_batch": 16, "accumulate_grad_batches": 2, "world_size": 2}
    assert tokens == 2 * 16 * cfg.data.block_size


@pytest.mark.parametrize("overrides,message", [
    (["data.global_batch_size=12"], r"data.global_batch_size=12 is not a multiple of data.batch_size=8 x "
                                    r"world size 1 .* = 8; allowed: multiples of 8"),
    (["data.global_batch_size=24", "trainer=ddp_spawn", "trainer.accelerator=cpu"],
     r"data.global_batch_size=24 is not a multiple of data.batch_size=8 x world size 2 \(trainer.devices=2"),
    (["data.global_batch_size=32", "trainer.accumulate_grad_batches=2"],
     r"trainer.accumulate_grad_batches=2 contradicts data.global_batch_size=32 .* needs 4"),
    (["data.global_batch_size=0"], "data.global_batch_size=0: must be null or an integer >= 1"),
])
def test_global_batch_that_does_not_divide_is_refused_before_any_work(make_cfg, tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        train(make_cfg(*overrides))
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_early_stopping_ends_a_run_whose_val_loss_stops_improving(make_cfg, tmp_path):
    cfg = make_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=2",
                   "callbacks.early_stopping.min_delta=1e-3", "optimizer.lr=1e-9", "trainer.max_steps=30",
                   "trainer.val_check_interval=1", "sched=constant")
    train(cfg)
    metrics = read_metrics(tmp_path / "run")
    assert len(column(metrics, "val/loss")) == 3  # the first sets the best, two more without improvement
    assert max(metrics["train/loss"]) == 2  # stopped at step 3 of 30


# ---- every sweep definition composes and runs -----------------------------------------------------


def sweep_jobs(make_cfg, name: str, *extra: str) -> list:
    """The job configs of `sweep=<name>`: each grid point of a basic sweeper, or the config an Optuna
    trial starts from."""
    base = make_cfg(f"sweep={name}", *extra)
    params = base.hydra.sweeper.get("params") or {}
    if not base.hydra.sweeper._target_.endswith("BasicSweeper") or not params:
        return [base]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [make_cfg(f"sweep={name}", *extra, *job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


@pytest.mark.parametrize("name", sorted(f.stem for f in SWEEPS.glob("*.yaml")))
def test_every_sweep_composes_and_its_first_job_runs_fast_dev_run(name, make_cfg):
    extra = ["optimizer=adamw", "optimizer.lr=3e-3"] if name == "optimizer_lr" else []  # its grid is typed
    jobs = sweep_jobs(make_cfg, name, *extra, "debug=fast")
    assert jobs and all(job.trainer.fast_dev_run for job in jobs)
    train(jobs[-1])  # the last one composed, which Hydra's config now describes


@pytest.mark.parametrize("name", sorted(f.stem for f in (SWEEPS / "slurm").glob("*.yaml")))
def test_slurm_launcher_settings_compose(name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition and launcher.gpus_per_node >= 1 and launcher.timeout_min > 0
    assert launcher.max_num_timeout > 0  # requeued after preemption or time-out
    GlobalHydra.instance().clear()


# ---- W&B sweep definitions ------------------------------------------------------------------------


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command `wandb agent` runs for one parameter set (as wandb_agent.Agent._command_run builds it)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = {**create_sweep_command_args({"args": params}), "env": ["/usr/bin/env"], "interpreter": ["python"],
              "program": [sweep["program"]]}
    command = []
    for chunk in map(str, create_sweep_command(list(sweep["command"]))):
        command += macros.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


@pytest.mark.parametrize("name", sorted(f.stem for f in (SWEEPS / "wandb").glob("*.yaml")))
def test_wandb_sweep_is_valid_and_its_command_runs(name, make_cfg, tmp_path):
    import sweeps as wandb_sweeps  # W&B's sweep engine (wandb[sweeps]), as its server and local controller use it

    sweep = yaml.safe_load((SWEEPS / "wandb" / f"{name}.yaml").read_text())
    assert wandb_sweeps.schema_violations_from_proposed_config(sweep) == []
    params = wandb_sweeps.next_run(sweep, [], validate=True).config  # one sampled parameter set
    command = agent_command(sweep, params)
    assert command[:3] == ["/usr/bin/env", "python", "train.py"] and (REPO_ROOT / command[2]).is_file()
    assert command[3:] == [f"{key}={value['value']}" for key, value in params.items()]
    cfg = make_cfg(*command[3:], "debug=fast")  # what train.py composes from those arguments
    for key, value in params.items():
        if "." in key:  # a field; a group choice (optimizer=lion) selects its config
            assert OmegaConf.select(cfg, key) == pytest.approx(value["value"])
        else:
            assert cfg.hydra.runtime.choices[key] == value["value"]
    train(cfg)
    assert (tmp_path / "run" / "run.json").is_file()


def test_a_value_no_job_could_run_with_stops_the_sweep_before_the_first_job(run_train_py, tmp_path):
    """Every job's config is checked before any job starts: one line naming the job and the key, exit status
    2, nothing trained or written (before: the valid jobs trained, then the bad one failed)."""
    sweep_dir = tmp_path / "grid"
    proc = run_train_py("optimizer.lr=1e-3,-1", run_dir=sweep_dir, multirun=True, returncode=2)
    assert proc.stderr.strip().splitlines() == [
        "Error: job 1 (optimizer.lr=-1): optimizer.lr=-1: must be a number > 0; no job was started"]
    assert not sweep_dir.exists()


@pytest.mark.parametrize("overrides,line", [
    (["sweep=lr_optuna", "optimizer.lr=interval(1e-1,1e-4)"],
     "Error: optimizer.lr=interval(1e-1,1e-4): The low value must be smaller than or equal to the high value "
     "(low=0.1, high=0.0001)."),
    (["sweep=lr_optuna", "hydra.sweeper.n_trials=0"], "Error: hydra.sweeper.n_trials=0: must be an integer >= 1"),
    (["sweep=lr_optuna", "optimizer.lr=interval(-1,1e-2)"],  # each end of a search space is a job's config
     "Error: optimizer.lr=interval(-1,1e-2), at optimizer.lr=-1.0: optimizer.lr=-1.0: must be a number > 0; no job "
     "was started"),
])
def test_optuna_search_spaces_and_options_are_checked_before_the_first_trial(run_train_py, tmp_path, overrides, line):
    sweep_dir = tmp_path / "optuna"
    proc = run_train_py(*overrides, run_dir=sweep_dir, multirun=True, returncode=2)
    assert proc.stderr.strip().splitlines() == [line] and "Traceback" not in proc.stdout
    assert not sweep_dir.exists()
