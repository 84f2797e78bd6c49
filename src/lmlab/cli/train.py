"""`python train.py [group=option ...]`: compose, check, build, fit, summarize.

Data flows one way: config -> instantiate -> LitLM -> Trainer -> callbacks/loggers. Every check that can
fail runs before any data is prepared, any weight is drawn or any file is written: the config alone
(lmlab.config), then the built objects (lmlab.config.preflight).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.atomic import atomic_write_text
from lmlab.callbacks.progress import progress_bar
from lmlab.checkpoint import read_checkpoint
from lmlab.checkpoint_io import SafeCheckpointIO
from lmlab.cli import CONF_DIR, build, resolved
from lmlab.cli.display import decode_and_print
from lmlab.cli.multirun import in_multirun, run_sweep_job
from lmlab.cli.quiet import silence_library_noise
from lmlab.cli.run_dir import record_run, resume_checkpoint, run_info, where
from lmlab.cli.run_lock import RunLock
from lmlab.cli.user_errors import hydra_task, run_hydra_app
from lmlab.config import check_train_config, preflight
from lmlab.config.resume import check_resume, run_settings
from lmlab.config.rules import SAMPLE_PROMPT_TOKENS, accumulation
from lmlab.devices import resolve_device
from lmlab.errors import InputError, under
from lmlab.loggers import AppendingCSVLogger, wandb_loggers
from lmlab.module import LitLM

log = logging.getLogger("lmlab")


@dataclass
class Run:
    """Every object of a run, each built once (the model on the meta device until it is checked)."""

    model: torch.nn.Module
    datamodule: L.LightningDataModule
    task: torch.nn.Module
    loss: torch.nn.Module
    optimizer: object
    scheduler: object
    callbacks: dict
    loggers: list
    trainer: L.Trainer


def train(cfg: DictConfig) -> float | None:
    check_train_config(resolved(cfg), multirun=in_multirun())
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulation(cfg.data, cfg.trainer)
    run_dir, owner = Path(cfg.paths.output_dir), rank_zero_only.rank == 0  # the other ranks share rank 0's
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), run_dir, resolved(cfg), claim=owner)
    with RunLock(run_dir, where(run_dir), owner=owner):
        return fit(cfg, run_dir, ckpt_path)


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: str | None) -> float | None:
    """The run, in a directory it holds: read the checkpoint's header, build every object, check them (and what a
    resume changes), then the first write, then train."""
    checkpoint = read_checkpoint(ckpt_path, field="ckpt_path", mmap=True) if ckpt_path else None
    resume_step = int(checkpoint.get("global_step", 0)) if checkpoint else None
    silence_library_noise(resuming=checkpoint is not None)
    L.seed_everything(cfg.seed, workers=True)
    info = run_info(run_dir, resume_step)
    run = build_run(cfg, run_dir, info, resume_step)
    settings = run_settings(resolved(cfg), run.datamodule)
    preflight.check_run(run.model, run.datamodule, run.loss, run.callbacks, run.trainer)
    if checkpoint is not None:
        info["starts"][-1]["changes"] = check_resume(ckpt_path, checkpoint, run.model, settings, run.optimizer,
                                                     run.scheduler, run.datamodule.prepare_tokenizer)
        report_changes(info["starts"][-1]["changes"], resume_step)
    preflight.materialize(run.model)
    preflight.check_dropout(run.model, run.datamodule)
    with under("data"):  # the data is prepared in the cache, so that what needs its tokenizer is checked before
        run.datamodule.prepare_data()  # the run's first write
        run.datamodule.setup("fit")
    tokenizer = run.datamodule.load_tokenizer()
    preflight.check_tokenizers(run.loss, run.callbacks, run.model, tokenizer)
    record_run(run_dir, cfg, info)  # the run's first write (besides its lock)
    exit_code = 1  # what the W&B run records unless fit returns
    try:
        describe_to_wandb(run.loggers, cfg, info)
        with under("data"):
            record_data_audit(run.datamodule, run_dir, run.loggers)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # encoding is done; DataLoader workers fork
        if rank_zero_only.rank == 0:
            tokenizer.save_pretrained(run_dir / "tokenizer")
        module = LitLM(run.model, run.loss, run.optimizer, run.scheduler, run.task, cfg.compile, tokenizer, settings)
        run.trainer.fit(module, datamodule=run.datamodule, ckpt_path=ckpt_path)
        exit_code = 0
    except SIGTERMException:
        exit_code = 143
        log.warning("SIGTERM: stopped at step %d; last checkpoint and logs are in %s", run.trainer.global_step,
                    run_dir)
        raise SystemExit(143) from None
    finally:
        finish_wandb(run.loggers, exit_code)
    if run.trainer.is_global_zero and not run.trainer.fast_dev_run and cfg.samples.num_prompts and hasattr(
            run.datamodule, "val_prompts"):
        print_samples(cfg, module, run.datamodule, tokenizer)
    return optimized_metric(cfg.optimized_metric, run.trainer)


def report_changes(changes: list[str], step: int) -> None:
    """One line: what this resume changes of the run, which it follows from the resumed step."""
    if changes:
        log.warning("resuming at step %d with changes this config makes (checkpoint -> config), followed from that "
                    "step (the LR: this config's schedule there): %s", step, "; ".join(changes))


def build_run(cfg: DictConfig, run_dir: Path, info: dict, resume_step: int | None) -> Run:
    """Every object from its config group; nothing is prepared or written, and the model has no memory yet
    (unless it loads pretrained weights, which are what they are)."""
    with torch.device("cpu" if cfg.model.get("pretrained") else "meta"):
        model = build(cfg.model)
    callbacks = {name: build(node) for name, node in (cfg.get("callbacks") or {}).items()}
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar)
                                                                 for c in callbacks.values()):
        callbacks["progress_bar"] = progress_bar()  # lmlab's bar or plain lines, not Lightning's `Epoch 0/-2`
    loggers = build_loggers(cfg, run_dir, info, resume_step or 0)
    with under("trainer"):
        preflight.check_strategy(cfg.trainer.get("strategy", "auto"))
    return Run(model, build(cfg.data), build(cfg.task), build(cfg.loss), build(cfg.optimizer), build(cfg.sched),
               callbacks, loggers, build_trainer(cfg, list(callbacks.values()), loggers, run_dir))


def build_loggers(cfg: DictConfig, run_dir: Path, info: dict, resume_step: int) -> list:
    """metrics.csv always (unless logger=none), then the configured loggers; W&B resumes the run's id.
    ``resume_step``: metrics.csv drops the rows logged from that step on (the run logs them again)."""
    if cfg.logger is None:
        return []
    extra = {"wandb": {"id": info["wandb_id"], "resume": "allow"}}
    return [AppendingCSVLogger(save_dir=run_dir, resume_step=resume_step),
            *(build(node, **extra.get(name, {})) for name, node in cfg.logger.items())]


def describe_to_wandb(loggers: list, cfg: DictConfig, info: dict) -> None:
    """The resolved config plus provenance, as the W&B run's config (this starts the W&B run)."""
    for logger in wandb_loggers(loggers):
        logger.experiment.config.update({**OmegaConf.to_container(cfg, resolve=True), "run": info},
                                        allow_val_change=True)


def record_data_audit(datamodule: L.LightningDataModule, run_dir: Path, loggers: list) -> None:
    """The audit of the split this run trains on (lmlab.data.audit; stored with the packed tokens): one line in
    the log, data_audit.json in the run directory, its counts in the W&B summary and its table in W&B."""
    if not hasattr(datamodule, "audit") or rank_zero_only.rank != 0:
        return
    from lmlab.data.audit import audit_metrics, summary_line

    report = datamodule.audit()
    log.info(summary_line(report))
    atomic_write_text(run_dir / "data_audit.json", json.dumps(report, indent=1))
    for logger in wandb_loggers(loggers):
        import wandb

        logger.experiment.summary.update(audit_metrics(report))
        rows = [[key.removeprefix("data/"), value] for key, value in audit_metrics(report).items()]
        logger.experiment.log({"data/audit": wandb.Table(columns=["finding", "count"], data=rows)}, commit=False)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, run_dir: Path) -> L.Trainer:
    """Lightning's Trainer; what it refuses on construction (too many devices) is the trainer config's mistake."""
    try:
        return build(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=run_dir,
                     plugins=[SafeCheckpointIO()])
    except InstantiationException as e:
        if isinstance(e.__cause__, MisconfigurationException | ValueError):
            raise InputError(f"trainer: {e.__cause__}") from e
        raise


def finish_wandb(loggers: list, exit_code: int = 0) -> None:
    """One W&B run per Hydra job (without finish(), every multirun job logs into the first run); a
    non-zero exit code marks the W&B run failed."""
    if wandb_loggers(loggers):
        import wandb

        wandb.finish(exit_code=exit_code)


def optimized_metric(name: str, trainer: L.Trainer) -> float | None:
    """What the run returns to a sweeper, with a warning naming the logged metrics when it was never logged."""
    metric, logged = trainer.callback_metrics.get(name), sorted(trainer.callback_metrics)
    validated = any(key.startswith("val/") for key in logged)  # else a val/ metric is missing for a reason
    if metric is None and logged and not trainer.fast_dev_run and (validated or not name.startswith("val/")):
        close = difflib.get_close_matches(name, logged, n=1)
        log.warning("optimized_metric=%s was never logged, so this run returns no metric to a sweeper%s; logged: %s",
                    name, f" (did you mean {close[0]}?)" if close else "", ", ".join(logged))
    return float(metric) if metric is not None else None


def print_samples(cfg: DictConfig, module: LitLM, datamodule, tokenizer) -> None:
    """Continuations of a few validation prompts with the configured decoding strategies."""
    model = module.model.to(resolve_device()).eval()
    prompts = datamodule.val_prompts(cfg.samples.num_prompts, min(SAMPLE_PROMPT_TOKENS, datamodule.block_size))
    decode_and_print(cfg.decoding, HydraConfig.get().runtime.choices.decoding, model, tokenizer, prompts,
                     cfg.samples.max_new_tokens, cfg.seed)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@hydra_task
def _main(cfg: DictConfig) -> float | None:
    return run_sweep_job(cfg, train) if in_multirun() else train(cfg)


def main() -> float | None:
    return run_hydra_app(_main)
