"""Training-stability telemetry and a policy for bad steps (`stability/` metrics).

Where each number is taken, in Lightning's order of one optimizer step:

    closure: training_step -> on_before_backward(loss) -> backward
    AMP (16-mixed) only: scaler.unscale_(optimizer)
    on_before_optimizer_step   <- grad_norm (unscaled, before clipping), spike tests, skip decision
    configure_gradient_clipping
    optimizer.step             (GradScaler skips it by itself on inf/NaN gradients)
    on_train_batch_end         <- param_norm, update_ratio, optimizer state, forward stats, logging

Every step runs only tensor ops on the device: one foreach norm over the gradients, the spike
tests against rolling windows, counters kept as tensors, and under DDP one all_reduce of the loss
(gradients are already reduced by DDP, so every rank takes the same decisions); with policy=log, which
decides nothing, the tests of an interval's steps run together at its logging step, in order (a
quarter of the per-step cost on CPU, where each small op costs microseconds). Values reach the
host only on logging steps, through Lightning's logging. Two policies read one flag per step:
`halt` (it must know whether to stop) and `skip` with an optimizer that lacks ``skip_step``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import annotated_types as at
import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lmlab.arguments import Positive, PositiveInt, checked
from lmlab.callbacks.distributed import all_reduce
from lmlab.callbacks.forward_stats import ForwardStatsSource
from lmlab.callbacks.layers import layer_name, layer_order
from lmlab.callbacks.metric_logging import log_interval, log_metrics
from lmlab.callbacks.spikes import SpikeDetector
from lmlab.errors import ArgumentError
from lmlab.loggers import wandb_loggers
from lmlab.optim.clipping import clip_coefficient, clips


def warmup_within_window(spike_window: int, spike_warmup: int) -> None:
    if spike_warmup > spike_window:
        raise ArgumentError("spike_warmup", spike_warmup, "must be at most {spike_window}", spike_window=spike_window)


class StabilityMonitor(L.Callback):
    """Gradient, parameter, update, optimizer-state and logit statistics, spike detection and a policy.

    Args:
        log_every_n_steps: optimizer steps between logged statistics; None: the trainer's
            log_every_n_steps (must be a multiple of it, or Lightning drops the values).
        per_layer: "scalars" (a grad and a param norm per block), "histogram" (W&B histograms of
            the per-block norms; scalars without a WandbLogger) or "off".
        spike_window, spike_warmup, spike_threshold: rolling window length, values seen before
            testing, and the threshold in standard deviations above the rolling mean.
        detect_grad_spikes: also test the gradient norm (not only the loss) for spikes.
        policy: on a non-finite or spiking step, "log" it, "skip" the optimizer update (params and
            optimizer state unchanged), or "halt": skip it, save a checkpoint and stop.
        clip_val: the gradient-norm clipping threshold for `grad_norm_clipped` and `clip_rate`
            when the module clips by itself; None: the trainer's gradient_clip_val.
        halt_checkpoint_dir: where `halt` saves; None: the ModelCheckpoint's dirpath, else
            `<run dir>/checkpoints`.
    """

    COUNTERS = ("nonfinite_steps", "skipped_steps", "loss_spikes", "grad_norm_spikes", "spike_step")

    @checked(rules=warmup_within_window)
    def __init__(
        self,
        log_every_n_steps: PositiveInt | None = None,
        per_layer: Literal["off", "scalars", "histogram"] = "scalars",
        spike_window: Annotated[int, at.Ge(2)] = 128,
        spike_warmup: Annotated[int, at.Ge(2)] = 64,
        spike_threshold: Positive = 6.0,
        detect_grad_spikes: bool = True,
        policy: Literal["log", "skip", "halt"] = "log",
        clip_val: Positive | None = None,
        halt_checkpoint_dir: str | None = None,
    ):
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.spike_args = (spike_window, spike_warmup, spike_threshold)
        self.detect_grad_spikes = detect_grad_spikes
        self.policy = policy
        self.clip_val = clip_val
        self.halt_checkpoint_dir = halt_checkpoint_dir
        self.halt_message: str | None = None
        self.halt_checkpoint: Path | None = None
        self._restored: dict | None = None
        self._warned: set[str] = set()

    # ---- set-up --------------------------------------------------------------------------

    def check_fit(self, trainer, model, datamodule) -> None:
        """What this callback needs of the run: called by ``setup`` and, before any work, by lmlab.preflight."""
        log_interval(trainer, self.log_every_n_steps)

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        self.every = log_interval(trainer, self.log_every_n_steps)
        if "FSDP" in type(trainer.strategy).__name__:
            self._warn_once("fsdp", "StabilityMonitor: under FSDP the norms are those of this rank's shards")

    def on_fit_start(self, trainer, pl_module):
        device = pl_module.device
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.layers = sorted({layer_name(n) for n, _ in named}, key=layer_order)
        index = {name: i for i, name in enumerate(self.layers)}
        self.layer_index = torch.tensor([index[layer_name(n)] for n, _ in named], device=device)
        self.optimizer = trainer.optimizers[0]
        group_of = {id(p): g for g, group in enumerate(self.optimizer.param_groups) for p in group["params"]}
        n_groups = len(self.optimizer.param_groups)
        self.group_names = [
            str(g.get("name", f"group{i}")) for i, g in enumerate(self.optimizer.param_groups)
        ]
        # parameters the optimizer does not own go to an extra bucket that is never logged
        self.group_index = torch.tensor([group_of.get(id(p), n_groups) for p in self.params], device=device)
        self.n_groups = n_groups
        lightning_clips = clips(trainer.gradient_clip_val)
        by_norm = (trainer.gradient_clip_algorithm or "norm") == "norm"  # None: Lightning's default, norm
        if not by_norm and self.clip_val is None and lightning_clips:
            self._warn_once("clip", "StabilityMonitor: clip_rate needs norm clipping; not logged")
        self.clip = self.clip_val or (trainer.gradient_clip_val if by_norm and lightning_clips else None)
        self.scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.per_layer == "histogram" and not wandb_loggers(trainer):
            self._warn_once(
                "hist", "StabilityMonitor: per_layer=histogram needs a WandbLogger; logging scalars"
            )

        window, warmup, threshold = self.spike_args
        self.loss_detector = SpikeDetector(window, warmup, threshold, device)
        self.grad_detector = SpikeDetector(window, warmup, threshold, device)
        self.counters = {n: torch.zeros((), dtype=torch.long, device=device) for n in self.COUNTERS}
        self.counters["clipped"] = torch.zeros((), dtype=torch.long, device=device)  # in this log interval
        self.counters["spike_step"] -= 1  # the step of the latest spike; -1: none yet
        if self._restored:
            self._load(self._restored)
            self._restored = None
        self._interval_steps = 0
        self._step_loss = None
        self._unchecked: list[tuple] = []  # policy=log: (step, loss, grad_norm) of steps not checked yet
        self._pending: dict | None = None
        self._halt_pending = None

    # ---- every step ------------------------------------------------------------------------

    def _is_log_step(self, trainer) -> bool:
        """Lightning logs after step k (0-based) when (k + 1) % log_every_n_steps == 0."""
        return (trainer.global_step + 1) % self.every == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._is_log_step(trainer) and isinstance(pl_module, ForwardStatsSource):
            pl_module.request_forward_stats()

    def on_before_backward(self, trainer, pl_module, loss):
        # the loss here is divided by accumulate_grad_batches (summing micro-batches gives the mean)
        # and, under 16-mixed, multiplied by the loss scale: scale(1) is that scale as a device tensor
        loss = loss.detach().float()
        if self.scaler is not None and self.scaler.is_enabled():
            loss = loss / self.scaler.scale(torch.ones((), device=loss.device))
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        norms = torch._foreach_norm(present, 2, dtype=torch.float32) if present else []
        grad_norm = (torch.linalg.vector_norm(torch.stack(norms)) if norms
                     else self.layer_index.new_zeros((), dtype=torch.float32))
        # None when the step had no backward (training_step returned None)
        loss = all_reduce(self._step_loss, "mean") if self._step_loss is not None else None
        self._step_loss = None
        self._interval_steps += 1
        if self.policy == "log":  # nothing to decide now: the interval's steps are checked in one go when logging
            self._unchecked.append((trainer.global_step, loss, grad_norm))
        else:
            self._check(trainer.global_step, loss, grad_norm, optimizer)

        if self._is_log_step(trainer) or self._halt_pending:
            self._check_unchecked()
            stats = {"grad_norm": grad_norm}
            if self.clip:
                stats["grad_norm_clipped"] = grad_norm * clip_coefficient(grad_norm, self.clip)
            if self.per_layer != "off":
                zero = grad_norm.new_zeros(())
                per_param = norms if len(present) == len(grads) else [
                    g.norm(dtype=torch.float32) if g is not None else zero for g in grads]
                stats["layer_grad_norms"] = self._by_layer(torch.stack(per_param))
            self._pending = {"stats": stats, "before": [p.detach().clone() for p in self.params]}

    def _check(self, step: int, loss, grad_norm, optimizer) -> None:
        """One optimizer step's non-finite values, spikes and clipping into the counters, and the policy."""
        c = self.counters
        grad_nonfinite = ~torch.isfinite(grad_norm)
        loss_nonfinite = ~torch.isfinite(loss) if loss is not None else torch.zeros_like(grad_nonfinite)
        nonfinite = grad_nonfinite | loss_nonfinite
        loss_spike = self.loss_detector.update(loss) if loss is not None else torch.zeros_like(nonfinite)
        grad_spike = (
            self.grad_detector.update(grad_norm) if self.detect_grad_spikes else torch.zeros_like(nonfinite)
        )
        c["nonfinite_steps"] += nonfinite
        c["loss_spikes"] += loss_spike
        c["grad_norm_spikes"] += grad_spike
        c["spike_step"] = torch.where(loss_spike | grad_spike, step, c["spike_step"])
        if self.clip:
            c["clipped"] += clip_coefficient(grad_norm, self.clip) < 1.0
        if self.policy == "log":  # never skips (a GradScaler skips inf/NaN gradients itself: counted below)
            if self.scaler is not None:
                c["skipped_steps"] += nonfinite
            return
        # under a GradScaler, inf/NaN gradients are its loss-scale search: it skips them itself
        bad = loss_nonfinite | loss_spike | grad_spike | (grad_nonfinite if self.scaler is None else False)
        skipped = self._apply_policy(optimizer, bad, step, loss, grad_norm)
        c["skipped_steps"] += (skipped | nonfinite) if self.scaler is not None else skipped

    def _check_unchecked(self) -> None:
        """policy=log: the steps since the last check, in order (so the counters and windows are as if each
        step had been checked at once)."""
        for step, loss, grad_norm in self._unchecked:
            self._check(step, loss, grad_norm, None)
        self._unchecked.clear()

    def _apply_policy(self, optimizer, bad, step, loss, grad_norm) -> torch.Tensor:
        """Skip (or prepare to halt on) a bad step; returns whether the update was skipped."""
        if self.policy == "log":
            return torch.zeros_like(bad)
        honours_skip = hasattr(optimizer, "skip_step")
        if honours_skip:
            optimizer.skip_step = bad  # the optimizer leaves params and state alone, no sync
            if self.policy == "skip":
                return bad
        elif self.policy == "skip":
            self._warn_once(
                "skip",
                f"StabilityMonitor: {type(optimizer).__name__} has no skip_step; "
                "policy=skip reads one flag to the host per step",
            )
        if bad.item():  # the one host read per step of halt, or of skip without skip_step
            if not honours_skip:
                for group in optimizer.param_groups:  # torch optimizers leave params without grads alone
                    for p in group["params"]:
                        p.grad = None
            if self.policy == "halt":
                self._halt_pending = (step, self._reason(loss, grad_norm))
        return bad

    def _reason(self, loss, grad_norm) -> str:
        """Names the metric that made a step bad (read to the host: only called when halting)."""
        if loss is not None and not torch.isfinite(loss).item():
            return f"the loss is not finite ({loss.item()})"
        if not torch.isfinite(grad_norm).item():
            return f"stability/grad_norm is not finite ({grad_norm.item()})"
        loss_spiked = loss is not None and (
            loss > self.loss_detector.mean + self.spike_args[2] * self.loss_detector.std).item()
        det, name, value = ((self.loss_detector, "loss", loss) if loss_spiked
                            else (self.grad_detector, "stability/grad_norm", grad_norm))
        return (
            f"{name} spiked to {value.item():.4g}, above its rolling mean {det.mean.item():.4g} "
            f"+ {self.spike_args[2]:g} x std {det.std.item():.4g}"
        )

    # ---- logging steps ---------------------------------------------------------------------

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._pending is None:
            return  # not an optimizer step, or not a logging step
        pending, self._pending = self._pending, None
        metrics, layers = self._step_metrics(pl_module, pending)
        if self.per_layer == "histogram" and wandb_loggers(trainer):
            self._log_histograms(trainer, layers)
        else:
            for kind, norms in layers.items():
                metrics |= {f"{kind}/{name}": value for name, value in zip(self.layers, norms, strict=True)}
        # the step Lightning logs this batch's own metrics at
        logged = log_metrics(
            trainer, {f"stability/{k}": v for k, v in metrics.items()}, trainer.global_step - 1, pl_module
        )
        if self.policy == "log" and logged["stability/nonfinite_steps"] > 0:
            self._warn_once(
                "nonfinite",
                f"StabilityMonitor: {int(logged['stability/nonfinite_steps'])} non-finite step(s) by step "
                f"{trainer.global_step}; policy=log applied their updates, so the weights may now be NaN. "
                "policy=skip skips such updates, policy=halt stops with a checkpoint from before",
            )
        if self._halt_pending:
            self._halt(trainer)

    def _step_metrics(self, pl_module, pending) -> tuple[dict, dict]:
        """Scalar metrics, and per-layer norm vectors keyed grad_norm / param_norm."""
        m, before = dict(pending["stats"]), pending["before"]
        layer_grad_norms = m.pop("layer_grad_norms", None)
        c = self.counters
        for name in self.COUNTERS:
            m[name] = c[name].float()
        if self.clip:
            m["clip_rate"] = c["clipped"].float() / self._interval_steps
            m["clip_threshold"] = float(self.clip)
            c["clipped"].zero_()
        self._interval_steps = 0

        param_norms = torch.stack(torch._foreach_norm(self.params, 2, dtype=torch.float32))
        m["param_norm"] = torch.linalg.vector_norm(param_norms)
        delta = torch.stack(
            torch._foreach_norm(torch._foreach_sub(self.params, before), 2, dtype=torch.float32)
        )
        before_norms = torch.stack(torch._foreach_norm(before, 2, dtype=torch.float32))
        m["update_ratio"] = torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(before_norms)
        if self.n_groups > 1:
            sq = lambda v: torch.zeros(self.n_groups + 1, device=v.device).index_add_(
                0, self.group_index, v**2
            )
            ratios = (sq(delta) / sq(before_norms)).sqrt()
            m |= {f"update_ratio/{name}": ratios[g] for g, name in enumerate(self.group_names)}
        m |= self._optimizer_state_stats()
        if isinstance(pl_module, ForwardStatsSource):  # max_logit, z_loss, ...
            for key, value in pl_module.pop_forward_stats().items():
                m[key] = all_reduce(value.float(), "max" if key.startswith("max_") else "mean")
        if self.scaler is not None and self.scaler.is_enabled():
            m["loss_scale"] = self.scaler.get_scale()
        layers = {}
        if layer_grad_norms is not None:
            layers = {"grad_norm": layer_grad_norms, "param_norm": self._by_layer(param_norms)}
        return m, layers

    def _by_layer(self, per_param: torch.Tensor) -> torch.Tensor:
        sq = torch.zeros(len(self.layers), device=per_param.device).index_add_(
            0, self.layer_index, per_param**2
        )
        return sq.sqrt()

    def _optimizer_state_stats(self) -> dict:
        """min / max / mean of Adam-like second-moment estimates (exp_avg_sq)."""
        states = [s["exp_avg_sq"] for s in self.optimizer.state.values() if "exp_avg_sq" in s]
        if not states:
            return {}
        numel = sum(s.numel() for s in states)
        return {
            "exp_avg_sq_min": torch.stack([s.min() for s in states]).min().float(),
            "exp_avg_sq_max": torch.stack([s.max() for s in states]).max().float(),
            "exp_avg_sq_mean": torch.stack([s.float().sum() for s in states]).sum() / numel,
        }

    def _log_histograms(self, trainer, layers: dict) -> None:
        import wandb

        step = trainer.global_step - 1
        for logger in wandb_loggers(trainer):
            logger.log_metrics(
                {f"stability/{k}/per_layer": wandb.Histogram(v.cpu().numpy()) for k, v in layers.items()},
                step=step,
            )

    def _halt(self, trainer) -> None:
        step, reason = self._halt_pending
        self._halt_pending = None
        directory = (
            self.halt_checkpoint_dir
            or getattr(trainer.checkpoint_callback, "dirpath", None)
            or (Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints")
        )
        path = Path(directory) / f"halt-step{step}.ckpt"
        trainer.save_checkpoint(path)  # every rank calls it; the update of the bad step was skipped
        trainer.should_stop = True
        self.halt_checkpoint = path
        self.halt_message = f"StabilityMonitor halted training at step {step}: {reason}. Checkpoint: {path}"
        rank_zero_warn(self.halt_message)

    # ---- checkpointing of the counters and windows ------------------------------------------

    def on_train_end(self, trainer, pl_module):
        self._check_unchecked()  # the steps after the last logging step, for the summary

    def state_dict(self) -> dict:
        if not hasattr(self, "counters"):
            return {}
        self._check_unchecked()
        return {
            "counters": {k: v.cpu() for k, v in self.counters.items()},
            "loss_window": self.loss_detector.state_dict(),
            "grad_window": self.grad_detector.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict  # applied in on_fit_start, once the tensors exist on the device

    def _load(self, state: dict) -> None:
        for k, v in state["counters"].items():
            self.counters[k].copy_(v)
        self.loss_detector.load_state_dict(state["loss_window"])
        self.grad_detector.load_state_dict(state["grad_window"])

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
