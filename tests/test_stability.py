"""StabilityMonitor on real short Lightning runs of a tiny GPT (CPU), checked against values
computed independently from gradient copies, parameter snapshots and the optimizer state.

`TinyLM` and `fit_tiny` live in tiny_lightning.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import read_metrics
from lightning.pytorch.plugins.precision import MixedPrecision
from tiny_lightning import TinyLM, fit_tiny, markov_sequences

from lmlab.callbacks.layers import layer_name
from lmlab.callbacks.spikes import SpikeDetector
from lmlab.callbacks.stability import StabilityMonitor
from lmlab.optim import param_groups


class Recorder(L.Callback):
    """Independent measurements around each optimizer step; registered before the monitor only
    in hooks where order does not matter (it runs after backward and reads, never writes)."""

    def __init__(self, clip: float):
        self.clip = clip

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.recorded[trainer.global_step] = {
            "before": [p.detach().clone() for p in pl_module.parameters()]
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rec = pl_module.recorded[trainer.global_step - 1]
        rec["after"] = [p.detach().clone() for p in pl_module.parameters()]
        rec["state"] = [s["exp_avg_sq"].clone() for s in trainer.optimizers[0].state.values()]
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]  # as the optimizer applied them
        rec["applied_grad_norm"] = math.sqrt(sum(g.norm().item() ** 2 for g in grads))  # none: a skipped step
        logits = pl_module.last_logits.double()  # recomputed here, independently of the module's mixin
        rec["forward_stats"] = {"max_logit": logits.max().item(), "z_loss": logits.logsumexp(-1).pow(2).mean().item()}


class GradCopy(L.Callback):
    """Copies the (unscaled, unclipped) gradients in on_before_optimizer_step, clipping comes after."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.detach().clone() for p in pl_module.parameters()]
        pl_module.recorded[trainer.global_step]["grads"] = grads


def test_layer_names_group_parameters_by_block():
    assert layer_name("model.blocks.3.attn.qkv.weight") == "blocks.3"
    assert layer_name("model.wte.weight") == "wte"
    assert layer_name("model.hf.model.layers.11.mlp.up_proj.weight") == "hf.model.layers.11"
    assert layer_name("model.norm_f.weight") == "norm_f"


def test_spike_detector_matches_rolling_statistics():
    torch.manual_seed(0)
    values = torch.randn(300) * 0.1 + 3.0
    values[200] = 3.0 + 0.1 * 8  # 8 sigma above
    det = SpikeDetector(window=50, warmup=20, threshold=6.0, device=torch.device("cpu"))
    flags = []
    for i, v in enumerate(values):
        flags.append(bool(det.update(v)))
        if i >= 20:
            ref = values[max(0, i - 50) : i]
            assert det.mean.item() == pytest.approx(ref.mean().item(), rel=1e-6)
            assert det.std.item() == pytest.approx(ref.std().item(), rel=1e-5)
    assert [i for i, f in enumerate(flags) if f] == [200]
    assert not any(det.update(torch.tensor(x)) for x in (math.nan, math.inf))  # not spikes, not stored
    assert det.count.item() == 300


def test_grad_norm_clip_and_update_ratio_equal_independent_values(tmp_path):
    clip = 0.05
    monitor = StabilityMonitor(log_every_n_steps=2, per_layer="scalars")
    trainer, module = fit_tiny(
        tmp_path, [Recorder(clip), monitor, GradCopy()], steps=6, gradient_clip_val=clip
    )
    m = read_metrics(tmp_path)
    logged_steps = sorted(m["stability/grad_norm"])
    assert logged_steps == [1, 3, 5]
    for step in logged_steps:
        rec = module.recorded[step]
        copies = [torch.zeros_like(g, requires_grad=True) for g in rec["grads"]]
        for c, g in zip(copies, rec["grads"], strict=True):
            c.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(copies, clip).item()
        clipped = torch.linalg.vector_norm(torch.stack([c.grad.norm() for c in copies])).item()
        assert m["stability/grad_norm"][step] == pytest.approx(total, rel=1e-5)
        assert m["stability/grad_norm_clipped"][step] == pytest.approx(clipped, rel=1e-4)
        assert m["stability/grad_norm_clipped"][step] == pytest.approx(rec["applied_grad_norm"], rel=1e-4)
        assert total > clip and m["stability/clip_rate"][step] == 1.0
        before, after = rec["before"], rec["after"]
        delta = math.sqrt(sum(((a - b) ** 2).sum().item() for a, b in zip(after, before, strict=True)))
        norm_before = math.sqrt(sum((b**2).sum().item() for b in before))
        assert m["stability/update_ratio"][step] == pytest.approx(delta / norm_before, rel=1e-4)
        norm_after = math.sqrt(sum((a**2).sum().item() for a in after))
        assert m["stability/param_norm"][step] == pytest.approx(norm_after, rel=1e-5)
        # per group: decayed matrices vs the rest, as lmlab's param_groups splits them
        groups = param_groups(module.model, 0.1)
        index = {id(p): i for i, p in enumerate(module.parameters())}
        for group in groups:
            ids = [index[id(p)] for p in group["params"]]
            d = math.sqrt(sum(((after[i] - before[i]) ** 2).sum().item() for i in ids))
            b = math.sqrt(sum((before[i] ** 2).sum().item() for i in ids))
            assert m[f"stability/update_ratio/{group['name']}"][step] == pytest.approx(d / b, rel=1e-4)
        # per block: squares of all layers add up to the total; blocks.0 is its own parameters' norm
        layer_sq = sum(v[step] ** 2 for k, v in m.items() if k.startswith("stability/grad_norm/"))
        assert layer_sq == pytest.approx(total**2, rel=1e-4)
        names = [n for n, _ in module.named_parameters()]
        block0 = math.sqrt(
            sum(
                rec["grads"][i].pow(2).sum().item()
                for i, n in enumerate(names)
                if n.startswith("model.blocks.0.")
            )
        )
        assert m["stability/grad_norm/blocks.0"][step] == pytest.approx(block0, rel=1e-5)
        state = rec["state"]
        assert m["stability/exp_avg_sq_max"][step] == pytest.approx(
            max(s.max().item() for s in state), rel=1e-5
        )
        assert m["stability/exp_avg_sq_min"][step] == pytest.approx(
            min(s.min().item() for s in state), abs=1e-12
        )
        mean = sum(s.sum().item() for s in state) / sum(s.numel() for s in state)
        assert m["stability/exp_avg_sq_mean"][step] == pytest.approx(mean, rel=1e-5)
        for key, value in rec["forward_stats"].items():
            assert m[f"stability/{key}"][step] == pytest.approx(value, rel=1e-6)
    assert m["stability/nonfinite_steps"][5] == 0 and m["stability/skipped_steps"][5] == 0


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_no_clipping_telemetry_when_lightning_does_not_clip(tmp_path, clip):
    """Lightning clips only for gradient_clip_val > 0; the monitor must not report clipping it never did."""
    trainer, module = fit_tiny(tmp_path, [Recorder(clip), StabilityMonitor()], steps=2, gradient_clip_val=clip)
    m = read_metrics(tmp_path)
    assert "stability/grad_norm_clipped" not in m and "stability/clip_rate" not in m
    assert m["stability/grad_norm"][1] == pytest.approx(module.recorded[1]["applied_grad_norm"], rel=1e-5)


def test_nan_batch_counts_nonfinite_steps(tmp_path):
    module = TinyLM(inject={3: "nan"})
    with pytest.warns(UserWarning, match="1 non-finite step.* by step 4; policy=log applied their updates"):
        fit_tiny(tmp_path, [StabilityMonitor()], steps=6, module=module)
    nonfinite = read_metrics(tmp_path)["stability/nonfinite_steps"]
    # policy log: the NaN update goes through and every later step is NaN too
    assert [nonfinite[s] for s in range(6)] == [0, 0, 0, 1, 2, 3]


@pytest.mark.parametrize("optimizer", ["adamw", "skippable_sgd"])
def test_skip_policy_leaves_params_and_state_of_bad_step(tmp_path, optimizer):
    module = TinyLM(optimizer=optimizer, lr=1e-2, inject={3: "nan"})
    monitor = StabilityMonitor(policy="skip")
    if optimizer == "adamw":  # no skip_step: the documented fallback reads one flag per step
        with pytest.warns(UserWarning, match="has no skip_step"):
            trainer, _ = fit_tiny(tmp_path, [Recorder(0.0), monitor], steps=6, module=module)
    else:
        trainer, _ = fit_tiny(tmp_path, [Recorder(0.0), monitor], steps=6, module=module)
    rec = module.recorded
    for before, after in zip(rec[3]["before"], rec[3]["after"], strict=True):
        assert torch.equal(before, after)
    if optimizer == "adamw":
        assert all(torch.equal(a, b) for a, b in zip(rec[2]["state"], rec[3]["state"], strict=True))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(rec[4]["before"], rec[4]["after"], strict=True))
    m = read_metrics(tmp_path)
    assert m["stability/nonfinite_steps"][5] == 1 and m["stability/skipped_steps"][5] == 1
    assert m["stability/skipped_steps"][2] == 0


def test_fp16_grad_scaler_overflows_are_counted_skipped_and_not_halted(tmp_path):
    """16-mixed (fp16 autocast + GradScaler, here on CPU): a high initial loss scale overflows the
    first steps; the scaler skips them, the monitor counts them and `halt` does not fire."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**22)
    monitor = StabilityMonitor(policy="halt")
    trainer, module = fit_tiny(
        tmp_path,
        [Recorder(0.0), monitor],
        steps=10,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )
    m = read_metrics(tmp_path)
    overflowed = [s for s in range(10) if not math.isfinite(m["stability/grad_norm"].get(s, math.nan))]
    assert overflowed and trainer.global_step == 10 and monitor.halt_message is None
    assert m["stability/nonfinite_steps"][9] == m["stability/skipped_steps"][9] == len(overflowed)
    for s in overflowed:  # the scaler skipped those updates
        assert all(
            torch.equal(a, b)
            for a, b in zip(module.recorded[s]["before"], module.recorded[s]["after"], strict=True)
        )
    assert m["stability/loss_scale"][9] < 2.0**22
    finite = [m["stability/grad_norm"][s] for s in range(10) if s not in overflowed]
    assert finite and max(finite) < 100  # unscaled before measuring (scaled norms would be ~1e5 and up)
    # the loss the spike test saw is the unscaled step loss
    assert monitor.loss_detector.values[:10].tolist() == pytest.approx(
        [m["train/loss"][s] for s in range(10)], rel=1e-6
    )


def test_counters_and_windows_resume_from_a_checkpoint(tmp_path):
    fit_tiny(
        tmp_path,
        [StabilityMonitor(policy="skip")],
        steps=4,
        module=TinyLM(inject={2: "nan"}),
        enable_checkpointing=True,
    )
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    resumed = StabilityMonitor(policy="skip")
    fit_tiny(tmp_path / "resumed", [resumed], steps=6, ckpt_path=str(ckpt))
    assert int(resumed.counters["nonfinite_steps"]) == 1 and int(resumed.counters["skipped_steps"]) == 1
    assert int(resumed.loss_detector.count) == 5  # 3 finite losses before, 2 after the resume


def test_halt_policy_stops_with_message_and_usable_checkpoint(tmp_path):
    module = TinyLM(inject={3: "nan"})
    monitor = StabilityMonitor(policy="halt")
    with pytest.warns(UserWarning, match="halted training at step 3: the loss is not finite"):
        trainer, _ = fit_tiny(tmp_path, [Recorder(0.0), monitor], steps=20, module=module)
    assert trainer.global_step == 4  # step 3 ran (its update skipped), then the run stopped
    assert monitor.halt_checkpoint == tmp_path / "checkpoints" / "halt-step3.ckpt"
    state = torch.load(monitor.halt_checkpoint, weights_only=True)["state_dict"]
    for (name, _), before in zip(module.named_parameters(), module.recorded[3]["before"], strict=True):
        assert torch.equal(state[name], before)
    resumed = TinyLM()
    resumed.load_state_dict(state)
    x = markov_sequences(4)
    assert torch.isfinite(resumed.model(x[:, :-1]).logits).all()


def test_no_false_spikes_on_a_normal_run_then_an_injected_spike_is_detected_once(tmp_path):
    """Default window 128, warm-up 64, 6 sigma: 130 normal steps (66 of them tested) raise nothing;
    the batch scaled to blow up the loss at step 130 is counted once, with its step."""
    spike_at = 130
    monitor = StabilityMonitor(log_every_n_steps=10)
    fit_tiny(tmp_path, [monitor], steps=140, module=TinyLM(inject={spike_at: "spike"}), log_every_n_steps=10)
    m = read_metrics(tmp_path)
    before, after = spike_at - 1, 139
    assert m["stability/loss_spikes"][before] == 0 and m["stability/grad_norm_spikes"][before] == 0
    assert m["train/loss"][before] < m["train/loss"][9] - 0.5  # a real, learning run
    assert m["stability/loss_spikes"][after] == 1 and m["stability/spike_step"][after] == spike_at


class SyncForbidden(StabilityMonitor):
    """Raises on any host-device synchronisation inside the per-step hooks of steps that do not log."""

    def _strict(self, trainer, hook, *args):
        strict = not self._is_log_step(trainer)
        torch.cuda.set_sync_debug_mode("error" if strict else 0)
        try:
            return hook(trainer, *args)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    def on_before_backward(self, trainer, *args):
        return self._strict(trainer, super().on_before_backward, *args)

    def on_before_optimizer_step(self, trainer, *args):
        return self._strict(trainer, super().on_before_optimizer_step, *args)


@pytest.mark.gpu
def test_steps_that_do_not_log_never_sync_with_the_host(tmp_path):
    monitor = SyncForbidden(policy="skip", per_layer="scalars")
    _, module = fit_tiny(
        tmp_path,
        [monitor],
        steps=10,
        module=TinyLM(optimizer="skippable_sgd", inject={3: "nan"}),
        accelerator="gpu",
        log_every_n_steps=5,
    )
    m = read_metrics(tmp_path)
    assert m["stability/nonfinite_steps"][9] == 1 and m["stability/skipped_steps"][9] == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


class ParamChecksum(L.Callback):
    """Writes each rank's parameter checksum at the end of fit (to compare replicas across ranks)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def on_fit_end(self, trainer, pl_module):
        total = sum(p.double().sum().item() for p in pl_module.parameters())
        (self.directory / f"rank{trainer.global_rank}.txt").write_text(repr(total))


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_ranks_take_the_same_decision_on_a_spike_seen_by_one_rank(tmp_path):
    """Only rank 1's loss spikes; the all-reduced loss makes both ranks detect and skip it, so the
    replicas stay identical (a rank-local decision would make them diverge)."""
    module = TinyLM(optimizer="skippable_sgd", lr=0.05, inject={8: "spike"}, inject_rank=1)
    monitor = StabilityMonitor(spike_window=8, spike_warmup=4, policy="skip", detect_grad_spikes=False)
    fit_tiny(
        tmp_path, [monitor, ParamChecksum(tmp_path)], steps=10, module=module, strategy="ddp_spawn", devices=2
    )
    m = read_metrics(tmp_path)
    assert m["stability/loss_spikes"][9] == 1 and m["stability/spike_step"][9] == 8  # logged by rank 0
    assert m["stability/skipped_steps"][9] == 1
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"policy": "ignore"}, "^policy='ignore': must be one of 'log', 'skip', 'halt'$"),
        ({"per_layer": "all"}, "^per_layer='all': must be one of"),
        ({"spike_warmup": 1}, "^spike_warmup=1: must be an integer >= 2$"),
        ({"spike_warmup": 200}, "^spike_warmup=200: must be at most spike_window=128$"),
        ({"spike_threshold": 0}, "^spike_threshold=0: must be a number > 0$"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        StabilityMonitor(**kwargs)


def test_log_interval_must_align_with_trainer(tmp_path):
    with pytest.raises(ValueError, match="^log_every_n_steps=3: must be a multiple of the Trainer's log_every_n_steps"):
        fit_tiny(tmp_path, [StabilityMonitor(log_every_n_steps=3)], steps=2, log_every_n_steps=2)
