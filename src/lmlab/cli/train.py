"""`python train.py [group=option ...]`: compose, check, build, fit, report.

Data flows one way: config -> instantiate -> LitLM -> Trainer -> callbacks/loggers. Every check
that can fail runs before the (slow) data preparation and training start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lmlab.cli import CONF_DIR
from lmlab.cli.cost import world_size
from lmlab.cli.generate import decode_and_print
from lmlab.cli.multirun import in_multirun, run_sweep_job
from lmlab.data import CodePairsDataModule
from lmlab.errors import InputError
from lmlab.loggers import AppendingCSVLogger
from lmlab.losses import InfoNCELoss
from lmlab.module import LitLM

log = logging.getLogger("lmlab")
# lmlab's sampler resumes mid-epoch itself (lmlab.data.sampler); Lightning cannot know that
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


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
    """Checks that need no data, so that bad input fails in seconds."""
    if cfg.optimizer.get("lr") is not None and cfg.optimizer.lr <= 0:
        raise ValueError(f"optimizer.lr={cfg.optimizer.lr} must be > 0")
    max_steps = cfg.trainer.get("max_steps", -1)
    if not cfg.trainer.get("fast_dev_run") and (max_steps is None or max_steps <= 0):
        raise ValueError(f"trainer.max_steps={max_steps} must be a positive number of optimizer steps")
    warmup = (cfg.get("sched") or {}).get("warmup_steps")
    if warmup and max_steps and max_steps > 0 and warmup > max_steps and not cfg.trainer.get("fast_dev_run"):
        raise ValueError(f"sched.warmup_steps={warmup} is longer than the run (trainer.max_steps={max_steps})")
    mode = HydraConfig.get().mode if HydraConfig.initialized() else RunMode.RUN
    if mode == RunMode.MULTIRUN and cfg.trainer.get("strategy") == "ddp" and not ranks_started_outside():
        raise ValueError(
            "trainer.strategy=ddp re-executes the command line, which would re-run the whole multirun; "
            "use trainer=ddp_spawn in sweeps (or a SLURM launcher, hydra/launcher=slurm_gpu, whose srun "
            "starts the ranks)"
        )


def ranks_started_outside() -> bool:
    """SLURM (srun / submitit tasks) or torchrun started every rank: Lightning's DDP re-launches nothing."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return SLURMEnvironment.detect() or TorchElasticEnvironment.detect()


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
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise InputError(f"data.global_batch_size={global_batch!r} must be a positive number of sequences")
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


def instantiate_datamodule(cfg: DictConfig):
    """The DataModule of `data`; global_batch_size is the trainer's business (apply_global_batch)."""
    fields = {key: cfg.data[key] for key in cfg.data if key != "global_batch_size"}
    return instantiate(OmegaConf.create(fields, parent=cfg))


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
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: {path} does not exist" + (hint if ckpt_path == "last" else ""))
    return str(path)


def build_loggers(cfg: DictConfig, run_dir: Path, info: dict) -> list:
    if cfg.logger is None:
        return []
    loggers = [AppendingCSVLogger(save_dir=run_dir)]
    for name, logger_cfg in cfg.logger.items():
        logger = instantiate(logger_cfg)
        if name == "wandb":  # the resolved config plus provenance, as the W&B run config
            logger.experiment.config.update({**OmegaConf.to_container(cfg, resolve=True), "run": info},
                                            allow_val_change=True)
        loggers.append(logger)
    return loggers


def check_model_fits_data(model, datamodule) -> None:
    if datamodule.block_size > model.max_seq_len:
        raise ValueError(
            f"data.block_size={datamodule.block_size} is larger than the model's context "
            f"({model.max_seq_len}: model.block_size or model.max_position_embeddings)"
        )


def check_loss_fits_data(loss, model, datamodule) -> None:
    """A contrastive loss compares embeddings of pair batches; SimCSE's two views differ only by dropout."""
    pairs = isinstance(datamodule, CodePairsDataModule)
    if isinstance(loss, InfoNCELoss) != pairs:
        raise ValueError(
            f"loss {type(loss).__name__} with data {type(datamodule).__name__}: loss=contrastive trains on "
            "pair batches (data=code_pairs, which it selects unless data= is given), and only on those"
        )
    if pairs and datamodule.pairs == "simcse" and not dropout_differs(model):
        raise ValueError("data.pairs=simcse needs dropout (the two views of a text differ only by it): "
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


def check_teacher(loss, model, tokenizer) -> None:
    """A teacher must share the student's tokenizer, or its logits index different tokens."""
    teacher_tokenizer = getattr(loss, "teacher_tokenizer", None)
    if teacher_tokenizer is None:
        return
    if teacher_tokenizer.backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str():
        raise ValueError("loss.teacher was trained with a different tokenizer than this run's data "
                         "(data.corpus and data.vocab_size must match the teacher's run)")
    vocab = model(torch.zeros(1, 1, dtype=torch.long)).logits.shape[-1]
    teacher_vocab = loss.teacher(torch.zeros(1, 1, dtype=torch.long)).logits.shape[-1]
    if vocab != teacher_vocab:
        raise ValueError(f"loss.teacher has {teacher_vocab} output logits, the model {vocab}")


def train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    apply_global_batch(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_datamodule(cfg)
    model = instantiate(cfg.model)
    check_model_fits_data(model, datamodule)
    loss = instantiate(cfg.loss)
    check_loss_fits_data(loss, model, datamodule)
    optimizer, scheduler = instantiate(cfg.optimizer), instantiate(cfg.sched)
    if scheduler is not None:  # schedules validate their arguments on construction: fail now, not later
        scheduler(optimizer([torch.zeros(1, requires_grad=True)]))

    info = run_info()
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "run.json").write_text(json.dumps(info, indent=2))

    datamodule.prepare_data()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # encoding is done; DataLoader workers fork
    tokenizer = datamodule.load_tokenizer()
    check_teacher(loss, model, tokenizer)
    if rank_zero_only.rank == 0:
        tokenizer.save_pretrained(run_dir / "tokenizer")

    module = LitLM(model, loss, optimizer, scheduler, compile=cfg.compile, tokenizer=tokenizer)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = build_loggers(cfg, run_dir, info)
    exit_code = 1  # what the W&B run records unless fit returns
    try:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=run_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        exit_code = 0
    except SIGTERMException:
        exit_code = 143
        log.warning("SIGTERM: stopped at step %d; last checkpoint and logs are in %s", trainer.global_step, run_dir)
        raise SystemExit(143) from None
    finally:
        finish_wandb(loggers, exit_code)

    metric = trainer.callback_metrics.get(cfg.optimized_metric)
    if trainer.is_global_zero and not trainer.fast_dev_run and cfg.samples.num_prompts and hasattr(
            datamodule, "val_prompts"):
        print_samples(module, datamodule, tokenizer, cfg)
    return float(metric) if metric is not None else None


def finish_wandb(loggers: list, exit_code: int = 0) -> None:
    """One W&B run per Hydra job (without finish(), every multirun job logs into the first run);
    a non-zero exit code marks the W&B run failed."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish(exit_code=exit_code)


def print_samples(module: LitLM, datamodule, tokenizer, cfg: DictConfig) -> None:
    """Continuations of a few validation prompts with the configured decoding strategies."""
    model = module.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    prompts = datamodule.val_prompts(cfg.samples.num_prompts, 16)
    decode_and_print(cfg, model, tokenizer, prompts, cfg.samples.max_new_tokens)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_sweep_job(cfg, train) if in_multirun() else train(cfg)
