"""Evaluate decoding strategies while training: the same prompts at every validation.

Logs ``decode/<strategy>/{tokens_per_s, mean_new_length, distinct_2, repetition_rate, perplexity}``
(plus ``acceptance_rate``, ``mean_accepted`` and ``tokens_per_target_forward`` for speculative
decoding) and a W&B table of the texts. With ``quantize`` (int8 or int4) a weight-only quantized
copy of the model is evaluated too, under ``decode/<strategy>-<mode>/``, with ``agreement``: the
fraction of its tokens equal to the float model's.

By default the evaluations take at most ``time_budget`` (1%) of the run's wall time: one runs at the first
validation, later ones when the time they took so far, plus the last one's again, stays within the budget
of the time since training started (so a run of many validations evaluates at fewer of them, evenly
spread in time). ``time_budget=None`` evaluates at every ``every_n_validations``-th one.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lmlab.arguments import Fraction, PositiveInt, checked
from lmlab.checkpoint import read_header
from lmlab.compare import token_agreement
from lmlab.config.resources import BYTES_PER_PARAM, CALLBACK_KEYS, check_decoding_memory
from lmlab.decoding.evaluate import (
    compiles,
    draft_path,
    evaluate_strategy,
    load_draft,
    sequences_at_once,
    strategies_by_name,
)
from lmlab.decoding.speculative import check_draft, draft_too_large
from lmlab.errors import ArgumentError
from lmlab.loggers import wandb_loggers
from lmlab.quantization import quantize
from lmlab.quantization.convert import Mode, quantization_of
from lmlab.spec import model_bytes, tokenizer_spec


class DecodingEvaluator(L.Callback):
    """``strategies``: one decoding partial (named ``name``) or a mapping name -> partial;
    ``quantize``: also evaluate an int8 or int4 copy (``quantize_group_size`` for int4, default 64);
    ``time_budget``: the largest share of the run's wall time the evaluations take (None: no limit)."""

    @checked(rules=quantization_of)
    def __init__(self, strategies, name: str = "decoding", num_prompts: PositiveInt = 4,
                 prompt_tokens: PositiveInt = 16, max_new_tokens: PositiveInt = 32,
                 every_n_validations: PositiveInt = 1, seed: int = 0, quantize: Mode | None = None,
                 quantize_group_size: PositiveInt | None = None, time_budget: Fraction | None = 0.01):
        self.quantization = quantization_of(quantize, quantize_group_size)
        self.strategies = strategies_by_name(strategies, name)  # drafts stay paths until check_fit has read them
        self.num_prompts, self.prompt_tokens, self.max_new_tokens = num_prompts, prompt_tokens, max_new_tokens
        self.every_n_validations, self.seed, self.time_budget = every_n_validations, seed, time_budget
        self.validations = 0
        self.spent = self.last = 0.0  # seconds of all evaluations, and of the latest
        self.started, self.skipped = time.perf_counter(), 0  # the clock restarts when training starts
        self.rows: list[list] = []  # every table row so far: W&B tables are logged whole
        self.warned: set[str] = set()  # drafts already warned about

    def check_fit(self, trainer: L.Trainer, model, datamodule, tokenizer=None) -> None:
        """Prompts are cut from validation blocks and continued within the model's context; each draft fits the
        model (and shares ``tokenizer``, once the data has one) and everything fits in memory (checkpoint headers
        read, no weight): called by ``setup`` and, before any work, by lmlab.preflight (``model`` on the meta
        device)."""
        block_size = getattr(datamodule, "block_size", None)
        if block_size is not None and self.prompt_tokens > block_size:
            raise ArgumentError("prompt_tokens", self.prompt_tokens, f"must be at most the data's block_size="
                                f"{block_size} (prompts are cut from validation blocks)")
        context = model.max_seq_len
        if self.prompt_tokens + self.max_new_tokens > context:
            raise ArgumentError("max_new_tokens", self.max_new_tokens, "{prompt_tokens} + max_new_tokens must be at "
                                f"most the model's context ({context})", prompt_tokens=self.prompt_tokens)
        training = sum(p.numel() for p in model.parameters()) * BYTES_PER_PARAM  # weights, gradients, Adam state
        copy_bytes = model_bytes(model) if self.quantization is not None else 0  # the copy that is quantized
        for name, decode in self.strategies.items():
            path = draft_path(decode)
            drafts = [] if path is None else [self._draft(name, path, model, tokenizer)]
            batch, beams = sequences_at_once(decode, self.num_prompts)
            check_decoding_memory([model, *(d.model for d in drafts)],
                                  training + copy_bytes + sum(d.built_bytes for d in drafts), batch, beams,
                                  self.prompt_tokens, self.max_new_tokens, trainer.strategy.root_device, CALLBACK_KEYS)

    def _draft(self, name: str, path: str, model, tokenizer=None):
        """The header of a strategy's draft checkpoint, checked against the model being trained (and against its
        tokenizer once the data has one); one warning when the draft is not smaller than the model."""
        ours = tokenizer_spec(tokenizer) if tokenizer is not None else None
        try:
            draft = read_header(path, field="draft")
            check_draft(draft.model, model, self.prompt_tokens + self.max_new_tokens, draft.tokenizer_spec, ours,
                        name=Path(path))
        except ArgumentError as e:
            raise e.within("strategies" if len(self.strategies) == 1 else f"strategies.{name}") from None
        warning = draft_too_large(draft.n_params, sum(p.numel() for p in model.parameters()))
        if warning and path not in self.warned:
            self.warned.add(path)
            rank_zero_warn(f"DecodingEvaluator: draft={path}: {warning}")
        return draft

    def check_tokenizer(self, model, tokenizer) -> None:
        """Each draft shares the data's tokenizer (known once the data is prepared: lmlab.preflight calls this
        before training starts)."""
        for name, decode in self.strategies.items():
            path = draft_path(decode)
            if path is not None:
                self._draft(name, path, model, tokenizer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Checks again, then loads the drafts."""
        if stage != "fit":
            return
        self.check_fit(trainer, pl_module.model, trainer.datamodule, pl_module.tokenizer)
        for name, decode in self.strategies.items():
            if draft_path(decode) is not None:
                self.strategies[name] = load_draft(decode)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def within_budget(self) -> bool:
        """Whether another evaluation, as long as the last, keeps them all within the time budget."""
        if self.time_budget is None or not self.spent:
            return True
        if self.spent + self.last <= self.time_budget * (time.perf_counter() - self.started):
            return True
        self.skipped += 1
        if self.skipped == 1:
            rank_zero_info(f"DecodingEvaluator: evaluating at fewer validations, to take at most {self.time_budget:.0%}"
                           " of the run's time (time_budget=None evaluates at every one)")
        return False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not hasattr(datamodule, "val_prompts"):
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n_validations or not trainer.is_global_zero:
            return
        if "fsdp" in type(trainer.strategy).__name__.lower():
            rank_zero_warn("DecodingEvaluator: skipped under FSDP (parameters are sharded across ranks)")
            return
        if not self.within_budget():
            return
        start = time.perf_counter()
        self.evaluate(trainer, pl_module)
        self.last = time.perf_counter() - start
        self.spent += self.last

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Decode the prompts with every strategy (and the quantized copy), log the metrics and the texts."""
        datamodule = trainer.datamodule
        prompts = datamodule.val_prompts(self.num_prompts, self.prompt_tokens)
        tokenizer, model = pl_module.tokenizer, pl_module.model
        was_training = model.training
        model.eval()
        models = {"": model}
        if self.quantization is not None:
            models[f"-{self.quantization.mode}"] = quantize(copy.deepcopy(model), self.quantization)
        for name, decode in self.strategies.items():
            reference = None
            for suffix, candidate in models.items():
                # a compiled strategy compiles in its first evaluation (later copies reuse the graphs): not timed
                result = evaluate_strategy(name + suffix, decode, candidate, prompts, self.max_new_tokens,
                                           tokenizer.eos_token_id, tokenizer.pad_token_id, self.seed,
                                           warmup=compiles(decode) and self.validations == 1)
                if reference is None:
                    reference = result
                else:
                    result.metrics["agreement"] = token_agreement(reference.completions, result.completions)
                for key, value in result.metrics.items():
                    pl_module.log(f"decode/{result.name}/{key}", value, rank_zero_only=True)
                self.rows += [[trainer.global_step, result.name, tokenizer.decode(p), tokenizer.decode(c)]
                              for p, c in zip(result.prompts, result.completions, strict=True)]
        model.train(was_training)
        for logger in wandb_loggers(trainer):
            logger.log_table("decode/samples", columns=["step", "strategy", "prompt", "output"], data=self.rows)
