"""`python train.py [group=option ...]`: compose, check, build, fit, report.

Data flows one way: config -> instantiate -> LitLM -> Trainer -> callbacks/loggers. Every check
that can fail runs before the (slow) data preparation and training start.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import secrets
import string
import subprocess
import sys
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.atomic import atomic_write_text
from lmlab.callbacks.progress import progress_bar
from lmlab.checkpoint import read_checkpoint
from lmlab.checkpoint_io import SafeCheckpointIO
from lmlab.cli import CONF_DIR, resolved
from lmlab.cli.cost import world_size
from lmlab.cli.generate import decode_and_print
from lmlab.cli.multirun import in_multirun, run_sweep_job
from lmlab.cli.quiet import silence_library_noise
from lmlab.cli.user_errors import build, hydra_task, run_hydra_app
from lmlab.config import check_train_config
from lmlab.config.resources import check_training_memory
from lmlab.config.run import SAMPLE_PROMPT_TOKENS
from lmlab.data import CodePairsDataModule
from lmlab.devices import resolve_device
from lmlab.errors import InputError
from lmlab.loggers import AppendingCSVLogger, wandb_loggers
from lmlab.models import GPT
from lmlab.module import LitLM

log = logging.getLogger("lmlab")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CONF_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_info() -> dict:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "overrides": list(HydraConfig.get().overrides.task),
        "git_sha": git_sha(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data (lmlab.config's schemas and cross-group rules), so bad input fails in
    seconds, before anything is built."""
    mode = HydraConfig.get().mode if HydraConfig.initialized() else RunMode.RUN
    check_train_config(resolved(cfg),
                       multirun=mode == RunMode.MULTIRUN)


def apply_global_batch(cfg: DictConfig) -> None:
    """`data.global_batch_size` (sequences per optimizer step, all ranks together) with `data.batch_size`
    as the micro batch sets `trainer.accumulate_grad_batches` for this run's world size."""
    global_batch = cfg.data.get("global_batch_size")
    if global_batch is None:
        return
    accelerator = cfg.trainer.get("accelerator", "auto")
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    world = world_size(cfg.trainer, torch.device("cuda" if cuda else "cpu"))
    per_pass = cfg.data.batch_size * world
    where = (f"data.batch_size={cfg.data.batch_size} x world size {world} (trainer.devices="
             f"{cfg.trainer.get('devices')} x trainer.num_nodes={cfg.trainer.get('num_nodes', 1)})")
    if global_batch % per_pass:
        raise InputError(f"data.global_batch_size={global_batch} is not a multiple of {where} = {per_pass}; "
                         f"allowed: multiples of {per_pass}, or change data.batch_size")
    accumulate = global_batch // per_pass
    explicit = cfg.trainer.get("accumulate_grad_batches", 1)
    if explicit not in (1, accumulate):
        raise InputError(f"trainer.accumulate_grad_batches={explicit} contradicts data.global_batch_size="
                         f"{global_batch} ({where} needs {accumulate}); set only one of them")
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulate


def check_memory(cfg: DictConfig) -> None:
    """The model built on the meta device (no memory), refused if training it could not fit."""
    if cfg.model.get("pretrained"):  # a Hugging Face checkpoint: its size is what it is
        return
    try:
        with torch.device("meta"):
            model = build(cfg.model)
    except InstantiationException:
        return  # a target that cannot be built on meta: its real construction reports its own errors
    trainer = cfg.trainer
    sharded = trainer.get("devices") if "fsdp" in str(trainer.get("strategy")) else 1
    check_training_memory(model, cfg.data.batch_size, cfg.data.block_size, str(trainer.get("accelerator", "auto")),
                          sharded if isinstance(sharded, int) and sharded > 0 else 1)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """None: start fresh; "last": this run directory's last.ckpt (must exist); "auto": last.ckpt when it
    exists, else start fresh (resubmitting the same command resumes, e.g. after a SLURM requeue)."""
    if ckpt_path is None:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    path = last if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir: pass hydra.run.dir=<run dir>)"
        raise InputError(f"ckpt_path={ckpt_path}: {path} does not exist" + (hint if ckpt_path == "last" else ""))
    return str(path)


def check_resume(ckpt_path: str, model) -> int:
    """The checkpoint reads safely (a CheckpointError names it otherwise) and holds this config's model, before
    any work: Lightning would fail only after the data is prepared, and deep in load_state_dict. Returns the
    optimizer step it was written at. Memory-mapped: the weights are not read here."""
    ckpt = read_checkpoint(ckpt_path, field="ckpt_path", mmap=True)
    spec = ckpt.get("lmlab", {}).get("model", {})
    if isinstance(model, GPT) and spec.get("kind") == "gpt":
        theirs, ours = spec["config"], model.to_config_dict()
        differs = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if differs:
            shown = ", ".join(f"{k}={theirs.get(k)!r} (config: {ours.get(k)!r})" for k in differs[:4])
            raise InputError(f"ckpt_path={ckpt_path}: the checkpoint's model differs from this config's: {shown}; "
                             "resume with the model settings it was trained with")
    return int(ckpt.get("global_step", 0))


def record_run(run_dir: Path, info: dict, resume_step: int | None) -> dict:
    """Write run.json: this start's provenance. A resumed run keeps its W&B run id and lists every start,
    so the W&B run continues across interruptions instead of starting a new one."""
    path = run_dir / "run.json"
    previous = {}
    if resume_step is not None and path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON; starting a new W&B run", path)
    start = {"started": info["started"], "command": info["command"], "from_step": resume_step or 0}
    starts = [*previous.get("starts", []), start]
    info = {**info, "wandb_id": previous.get("wandb_id") or new_run_id(), "starts": starts}
    atomic_write_text(path, json.dumps(info, indent=2))
    return info


def new_run_id() -> str:
    """8 lowercase letters and digits, as W&B's ids (from the OS, so no seeded RNG is consumed)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def build_loggers(cfg: DictConfig, run_dir: Path, info: dict, resume_step: int | None) -> list:
    """metrics.csv always (unless logger=none), then the configured loggers; W&B resumes the run's id."""
    if cfg.logger is None:
        return []
    loggers = [AppendingCSVLogger(save_dir=run_dir, resume_step=resume_step)]
    for name, logger_cfg in cfg.logger.items():
        extra = {"id": info.get("wandb_id"), "resume": "allow"} if name == "wandb" else {}
        logger = build(logger_cfg, **extra)
        if name == "wandb":  # the resolved config plus provenance, as the W&B run config
            logger.experiment.config.update({**OmegaConf.to_container(cfg, resolve=True), "run": info},
                                            allow_val_change=True)
        loggers.append(logger)
    return loggers


def check_simcse_dropout(model, datamodule) -> None:
    """SimCSE's two views of a text differ only by dropout: the built model must have some."""
    if isinstance(datamodule, CodePairsDataModule) and datamodule.pairs == "simcse" and not dropout_differs(model):
        raise InputError("data.pairs=simcse needs dropout (the two views of a text differ only by it): "
                         "set model.dropout > 0, e.g. model.dropout=0.1 (HF models: their dropout fields)")


@torch.no_grad()
def dropout_differs(model) -> bool:
    """Whether two training-mode forward passes of one input differ."""
    was_training = model.training
    model.train()
    ids = torch.zeros(1, 4, dtype=torch.long)
    first, second = (model(ids, output_hidden=True).hidden for _ in range(2))
    model.train(was_training)
    return not torch.equal(first, second)


def check_teacher_vocab(loss, model) -> None:
    """A teacher's logits must index the student's vocabulary (checked before any data preparation)."""
    if getattr(loss, "teacher", None) is None:
        return
    vocab = model(torch.zeros(1, 1, dtype=torch.long)).logits.shape[-1]
    teacher_vocab = loss.teacher(torch.zeros(1, 1, dtype=torch.long)).logits.shape[-1]
    if vocab != teacher_vocab:
        raise InputError(f"loss.teacher: was trained with a different tokenizer: its {teacher_vocab} output logits do "
                         f"not match this model's {vocab} (data.vocab_size and data.corpus must match the teacher's "
                         "run)")


def check_teacher_tokenizer(loss, tokenizer) -> None:
    """A teacher must share the student's tokenizer, or its logits index different tokens."""
    teacher_tokenizer = getattr(loss, "teacher_tokenizer", None)
    if teacher_tokenizer is None:
        return
    if teacher_tokenizer.backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str():
        raise InputError("loss.teacher: was trained with a different tokenizer than this run's data "
                         "(data.corpus and data.vocab_size must match the teacher's run)")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, run_dir: Path) -> L.Trainer:
    """Lightning's Trainer; what it refuses on construction (no GPU for accelerator=gpu, too many devices)
    is the trainer config's mistake."""
    try:
        return build(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=run_dir,
                     plugins=[SafeCheckpointIO()])
    except InstantiationException as e:
        if isinstance(e.__cause__, MisconfigurationException | ValueError):
            raise InputError(f"trainer: {e.__cause__}") from e
        raise


def train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    apply_global_batch(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    silence_library_noise(resuming=ckpt_path is not None)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    datamodule.check_inputs()
    check_memory(cfg)
    model = build(cfg.model)
    # the step this run starts from: metrics.csv drops rows logged after it (the run logs them again)
    resume_step = check_resume(ckpt_path, model) if ckpt_path else 0
    loss = build(cfg.loss)
    check_teacher_vocab(loss, model)
    check_simcse_dropout(model, datamodule)
    optimizer, scheduler = build(cfg.optimizer), build(cfg.sched)
    if scheduler is not None:  # schedules validate their arguments on construction: fail now, not later
        scheduler(optimizer(torch.nn.Linear(1, 1)))
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(progress_bar())  # lmlab's bar or plain lines, not Lightning's default (`Epoch 0/-2`)

    info = run_info()
    if rank_zero_only.rank == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            info = record_run(run_dir, info, resume_step if ckpt_path else None)
        except OSError as e:
            raise InputError(f"hydra.run.dir={run_dir} cannot be written ({e.strerror}); choose a writable "
                             "folder (hydra.run.dir=... or paths.log_dir=...)") from e
    loggers = build_loggers(cfg, run_dir, info, resume_step)
    exit_code = 1  # what the W&B run records unless fit returns
    try:
        trainer = build_trainer(cfg, callbacks, loggers, run_dir)
        datamodule.prepare_data()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # encoding is done; DataLoader workers fork
        tokenizer = datamodule.load_tokenizer()
        check_teacher_tokenizer(loss, tokenizer)
        if rank_zero_only.rank == 0:
            tokenizer.save_pretrained(run_dir / "tokenizer")
        module = LitLM(model, loss, optimizer, scheduler, compile=cfg.compile, tokenizer=tokenizer)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        exit_code = 0
    except SIGTERMException:
        exit_code = 143
        log.warning("SIGTERM: stopped at step %d; last checkpoint and logs are in %s", trainer.global_step, run_dir)
        raise SystemExit(143) from None
    finally:
        finish_wandb(loggers, exit_code)

    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    logged = sorted(trainer.callback_metrics)
    validated = any(name.startswith("val/") for name in logged)  # else a val/ metric is missing for a reason
    misspelled = validated or not cfg.optimized_metric.startswith("val/")
    if metric is None and logged and not trainer.fast_dev_run and misspelled:
        close = difflib.get_close_matches(cfg.optimized_metric, logged, n=1)
        log.warning("optimized_metric=%s was never logged, so this run returns no metric to a sweeper%s; logged: %s",
                    cfg.optimized_metric, f" (did you mean {close[0]}?)" if close else "", ", ".join(logged))
    if trainer.is_global_zero and not trainer.fast_dev_run and cfg.samples.num_prompts and hasattr(
            datamodule, "val_prompts"):
        print_samples(module, datamodule, tokenizer, cfg)
    return float(metric) if metric is not None else None


def finish_wandb(loggers: list, exit_code: int = 0) -> None:
    """One W&B run per Hydra job (without finish(), every multirun job logs into the first run); a
    non-zero exit code marks the W&B run failed."""
    if wandb_loggers(loggers):
        import wandb

        wandb.finish(exit_code=exit_code)


def print_samples(module: LitLM, datamodule, tokenizer, cfg: DictConfig) -> None:
    """Continuations of a few validation prompts with the configured decoding strategies."""
    model = module.model.to(resolve_device()).eval()
    prompts = datamodule.val_prompts(cfg.samples.num_prompts, min(SAMPLE_PROMPT_TOKENS, datamodule.block_size))
    decode_and_print(cfg, model, tokenizer, prompts, cfg.samples.max_new_tokens)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@hydra_task
def _main(cfg: DictConfig) -> float | None:
    return run_sweep_job(cfg, train) if in_multirun() else train(cfg)


def main() -> float | None:
    return run_hydra_app(_main)
