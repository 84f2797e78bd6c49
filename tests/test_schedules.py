"""Schedules against their closed-form formulas, read back from the optimizer's param groups."""

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_ENV
from helpers import read_metrics
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmlab.cli import resolved
from lmlab.config import check_train_config
from lmlab.errors import InputError
from lmlab.optim import WSD, InverseSqrt, WarmupConstant, WarmupCosine, WarmupLinear

W, T, R = 10, 50, 0.1
BASE_LRS = (1e-3, 3e-4)


def _optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a], "lr": BASE_LRS[0]}, {"params": [b], "lr": BASE_LRS[1]}])


def _cosine(s):
    if s < W:
        return (s + 1) / W
    return R + (1 - R) * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - W) / (T - W))))


def _linear(s):
    return (s + 1) / W if s < W else R + (1 - R) * (1 - min(1.0, (s - W) / (T - W)))


def _constant(s):
    return (s + 1) / W if s < W else 1.0


def _wsd(s, frac=0.2):
    start = T - frac * T  # 40: after warmup
    if s < W:
        return (s + 1) / W
    return 1.0 if s < start else R + (1 - R) * (1 - min(1.0, (s - start) / (T - start)))


def _inverse_sqrt(s):
    return (s + 1) / W if s < W else math.sqrt(W / max(s + 1, W))


CASES = {
    "cosine": (lambda opt: WarmupCosine(opt, W, T, min_lr_ratio=R), _cosine),
    "linear": (lambda opt: WarmupLinear(opt, W, T, min_lr_ratio=R), _linear),
    "constant": (lambda opt: WarmupConstant(opt, W), _constant),
    "wsd": (lambda opt: WSD(opt, W, T, decay_fraction=0.2, min_lr_ratio=R), _wsd),
    "inverse_sqrt": (lambda opt: InverseSqrt(opt, W), _inverse_sqrt),
}
CHECK_STEPS = (0, W - 1, W, (W + T) // 2, T - 1, T, T + 7)


@pytest.mark.parametrize("name", CASES)
def test_lr_in_optimizer_follows_formula(name):
    make, formula = CASES[name]
    opt = _optimizer()
    sched = make(opt)
    seen = {}
    for s in range(T + 8):  # the LR in use at optimizer step s, as a training loop sees it
        seen[s] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    for s in CHECK_STEPS:
        expected = [base * formula(s) for base in BASE_LRS]
        assert seen[s] == pytest.approx(expected, rel=1e-12, abs=0), (name, s)
        assert sched.multiplier(s) == pytest.approx(formula(s), rel=1e-12, abs=0)


def test_key_values_of_cosine():
    sched = WarmupCosine(_optimizer(), W, T, min_lr_ratio=R)
    assert sched.multiplier(0) == pytest.approx(1 / W)
    assert sched.multiplier(W - 1) == pytest.approx(1.0)
    assert sched.multiplier(W) == pytest.approx(1.0)  # decay starts from the peak
    assert sched.multiplier(T) == pytest.approx(R)
    assert sched.multiplier(10 * T) == pytest.approx(R)
    mid = W + (T - W) // 2
    assert sched.multiplier(mid) == pytest.approx(R + (1 - R) * 0.5)


def test_wsd_decay_never_overlaps_warmup():
    sched = WSD(_optimizer(), warmup_steps=8, total_steps=10, decay_fraction=0.5)
    assert sched.multiplier(7) == pytest.approx(1.0)
    assert sched.decay_start == 8
    assert sched.multiplier(9) == pytest.approx(0.5)
    assert sched.multiplier(10) == 0.0


def test_no_warmup_and_the_longest_warmup():
    assert WarmupCosine(_optimizer(), 0, T).multiplier(0) == pytest.approx(1.0)
    longest = WarmupLinear(_optimizer(), T - 1, T, min_lr_ratio=R)
    assert longest.multiplier(T - 2) == pytest.approx(1.0)
    assert longest.multiplier(T) == pytest.approx(R)  # one decay step, then at the floor


@pytest.mark.parametrize("fraction, steps", [(0.1, 5), (0.05, 2), (0.01, 0)])
def test_warmup_as_a_fraction_of_the_run(fraction, steps):
    """A fraction of total_steps, rounded to a step: the same schedule fits a run of any length."""
    sched = WarmupCosine(_optimizer(), fraction, T)
    assert sched.warmup_steps == round(fraction * T) == steps
    assert WarmupConstant(_optimizer(), fraction, T).warmup_steps == steps
    assert [WarmupCosine(_optimizer(), 0.1, n).warmup_steps for n in (1, 2, 30, 300)] == [0, 0, 3, 30]


def test_state_dict_round_trip_resumes_schedule():
    opt = _optimizer()
    sched = WarmupCosine(opt, W, T, min_lr_ratio=R)
    for _ in range(17):
        opt.step()
        sched.step()
    opt2 = _optimizer()
    opt2.load_state_dict(opt.state_dict())
    sched2 = WarmupCosine(opt2, W, T, min_lr_ratio=R)
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(BASE_LRS[0] * _cosine(18))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda o: WarmupCosine(o, -1, T), r"^warmup_steps=-1: must be an integer >= 0 or a number in \(0, 1\)$"),
        (lambda o: WarmupCosine(o, W, 0), r"^total_steps=0: must be an integer >= 1$"),
        (lambda o: WarmupLinear(o, 60, T), r"^warmup_steps=60: must be less than total_steps=50"),
        (lambda o: WarmupLinear(o, T, T), r"^warmup_steps=50: must be less than total_steps=50"),
        (lambda o: WarmupCosine(o, W, T, min_lr_ratio=1.5), r"^min_lr_ratio=1\.5: must be a number in \[0, 1\]$"),
        (lambda o: WSD(o, W, T, decay_fraction=0.0), r"^decay_fraction=0\.0: must be a number in \(0, 1\]$"),
        (lambda o: WSD(o, W, T, decay_fraction=1.2), r"^decay_fraction=1\.2"),
        (lambda o: WarmupConstant(o, 2.5), r"^warmup_steps=2\.5: must be an integer >= 0 or a number in \(0, 1\)"),
        (lambda o: WarmupConstant(o, 0.5), r"^warmup_steps=0\.5: a fraction of the run needs total_steps=null"),
        (lambda o: InverseSqrt(o, 0), r"^warmup_steps=0: must be at least one step"),
    ],
)
def test_bad_arguments_name_the_field(make, match):
    opt = _optimizer()
    with pytest.raises(ValueError, match=match):
        make(opt)
    assert opt.param_groups[0]["lr"] == BASE_LRS[0]  # raised before touching the optimizer


def test_lr_inside_a_lightning_run_follows_schedule(tmp_path):
    """Stepped by Lightning with interval=step: the LR at optimizer step s is base_lr * m(s)."""
    lightning = pytest.importorskip("lightning")
    from lmlab.optim import AdamW

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(self.optimizers().param_groups[0]["lr"])
            return self.layer(batch).square().mean()

        def configure_optimizers(self):
            optimizer = AdamW(self.parameters(), lr=BASE_LRS[0])
            scheduler = WarmupCosine(optimizer, W, T, min_lr_ratio=R)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    model = Tiny()
    trainer = lightning.Trainer(
        max_steps=T + 3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(torch.randn(4 * (T + 3), 2), batch_size=4))
    assert model.seen == pytest.approx([BASE_LRS[0] * _cosine(s) for s in range(T + 3)], rel=1e-12, abs=0)


SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "sched").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_schedule_fits_a_run_of_any_length(name):
    """`trainer.max_steps=N` alone: the shipped warmup is a fraction of the run, so every N >= 1 builds a schedule
    whose LR is positive at each of the run's steps (the first step already trains) and never above the base LR."""
    node = OmegaConf.load(Path(__file__).parents[1] / "conf" / "sched" / f"{name}.yaml")
    assert isinstance(node.warmup_steps, float) and 0 < node.warmup_steps < 1
    for n in (*range(1, 41), 99, 1000):
        node.total_steps = n
        sched = instantiate(node)(_optimizer())
        assert all(0 < sched.multiplier(s) <= 1 for s in range(n)), (name, n)


def test_trainer_max_steps_alone_trains_with_the_shipped_schedules(train_command, tmp_path):
    """Real `python train.py trainer.max_steps=N` runs with the shipped warmup (no sched edit), down to one step:
    each trains its N steps and ends with a validation at its last step."""
    for n, sched in ((1, "cosine"), (2, "inverse_sqrt")):  # trainer.val_check_interval=3: neither is a multiple
        run_dir = tmp_path / sched
        command = [arg for arg in train_command(f"sched={sched}", f"trainer.max_steps={n}", "callbacks=none",
                                                "+trainer.enable_checkpointing=false", "samples.num_prompts=0",
                                                run_dir=run_dir)
                   if not arg.startswith("sched.warmup_steps=")]
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **SUBPROCESS_ENV})
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = read_metrics(run_dir)
        assert sorted(metrics["train/loss"]) == list(range(n)) and sorted(metrics["val/loss"]) == [n - 1], metrics


@pytest.mark.parametrize("warmup", ["30", "31"])
def test_an_explicit_warmup_as_long_as_the_run_is_one_line_naming_both_keys(make_cfg, warmup):
    with pytest.raises(InputError) as error:
        check_train_config(resolved(make_cfg("trainer.max_steps=30", f"sched.warmup_steps={warmup}")))
    assert str(error.value) == (f"sched.warmup_steps={warmup}: must be less than sched.total_steps=30 (or a fraction "
                                "of the run, e.g. 0.1)")
