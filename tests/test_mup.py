"""μP: the model and optimizer rules against TP5 Table 8 in closed form, the coordinate check's goals (both
directions), equality with the standard parametrization at the base width, schedules and weight decay per
group, Muon's spectral updates, bad input."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmlab.callbacks.group_lr import group_labels
from lmlab.coord_check import HIDDEN_KINDS, coord_check, width_ratios, zipf_tokens
from lmlab.errors import ArgumentError
from lmlab.models import GPT
from lmlab.optim import SGD, WSD, AdamW, Lion, Muon, WarmupCosine, grouped
from lmlab.optim.mup import check_optimizer

TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
LLAMA = dict(TINY, n_kv_head=2, bias=False, position="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def gpt(seed: int = 0, **config) -> GPT:
    torch.manual_seed(seed)
    return GPT(**config)


def loss_of(model: GPT, batch: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())


def one_step(model: GPT, optimizer, batch: torch.Tensor) -> torch.Tensor:
    loss = loss_of(model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


# ---- the standard parametrization is untouched; μP equals it at the base width ---------------------------

# sha256 (first 16 hex digits) of the state dict and logits on fixed ids of GPT(**config) after
# torch.manual_seed(0), made with the code before μP existed (commit ac0b485), torch 2.13 CPU
TODAYS_MODEL = {"gpt2": ({**TINY, "n_head": 2}, "af1de6aa85dc6d81"), "llama": (LLAMA, "05a38eb6f0f24e90")}


@pytest.mark.parametrize("name", sorted(TODAYS_MODEL))
def test_standard_parametrization_is_todays_model_bit_for_bit(name):
    config, expected = TODAYS_MODEL[name]
    model = gpt(0, **config, parametrization="standard")
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    ids = torch.arange(24).reshape(2, 12) % config["vocab_size"]
    digest.update(model(ids).logits.detach().numpy().tobytes())
    assert digest.hexdigest()[:16] == expected


@pytest.mark.parametrize("config", [TINY, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("optimizer", ["adamw", "torch_adamw", "sgd", "muon"])
def test_mup_at_the_base_width_gives_the_standard_loss_and_first_update(config, optimizer):
    factories = {
        "adamw": lambda m: AdamW(m, lr=1e-2, weight_decay=0.1),
        "torch_adamw": lambda m: grouped(m, "torch.optim.AdamW", lr=1e-2, weight_decay=0.1, foreach=True),
        "sgd": lambda m: SGD(m, lr=0.3, momentum=0.9, nesterov=True),
        "muon": lambda m: Muon(m, lr=0.02, weight_decay=0.1, adamw_lr=1e-2),
    }
    batch = zipf_tokens(config["vocab_size"], 4, 13, torch.Generator().manual_seed(0))
    standard = gpt(1, **config)
    mup = gpt(1, **config, parametrization="mup", mup_base_width=config["n_embd"])
    assert {n: torch.equal(p, mup.state_dict()[n]) for n, p in standard.state_dict().items()} == \
        dict.fromkeys(standard.state_dict(), True)
    losses = [one_step(model, factories[optimizer](model), batch) for model in (standard, mup)]
    assert torch.equal(*losses)
    for (name, p), q in zip(standard.named_parameters(), mup.parameters(), strict=True):
        assert torch.equal(p, q), name


# ---- the model's rules (TP5 Table 8, Definition 4.1) ---------------------------------------------------


def test_mup_model_scales_hidden_init_readout_and_attention_as_table_8():
    base, width = 32, 128  # m = 4: every factor below is a power of two, so the comparisons are exact
    standard = gpt(0, **{**LLAMA, "n_embd": width})
    mup = gpt(0, **{**LLAMA, "n_embd": width}, parametrization="mup", mup_base_width=base)
    base_inner = GPT(**LLAMA).blocks[0].mlp.down.in_features  # the SwiGLU width rounds: not 4x
    for (name, p), q in zip(standard.named_parameters(), mup.parameters(), strict=True):
        if name.endswith(("qkv.weight", "proj.weight", "gate.weight", "up.weight")):
            torch.testing.assert_close(q, p / 2, rtol=0, atol=0)  # variance / (fan_in ratio = 4)
        elif name.endswith("down.weight"):
            torch.testing.assert_close(q, p / math.sqrt(p.shape[1] / base_inner), rtol=1e-6, atol=0)
        else:  # embeddings, norms and the (untied) readout: unchanged
            assert torch.equal(p, q), name
    # logits: the readout sees its input / m; attention scores q.k * sqrt(d_base) / d (naive reference)
    ids = torch.arange(24).reshape(2, 12) % 64
    hidden = mup(ids, output_hidden=True).hidden
    torch.testing.assert_close(mup(ids).logits, hidden @ mup.lm_head.weight.T / 4, rtol=1e-5, atol=1e-6)
    attn = mup.blocks[0].attn
    x = torch.randn(2, 12, width)
    q, k, v = attn.qkv(x).split([width, width // 2, width // 2], dim=-1)
    q = q.view(2, 12, 4, 32).transpose(1, 2)
    k, v = (t.view(2, 12, 2, 32).transpose(1, 2).repeat_interleave(2, dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) * math.sqrt(base // 4) / (width // 4)
    scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, width))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_readout_zero_init_zeroes_an_untied_head():
    model = gpt(0, **LLAMA, parametrization="mup", mup_base_width=16, readout_zero_init=True)
    assert not model.lm_head.weight.any() and model.wte.weight.any()
    assert not model(torch.zeros(1, 4, dtype=torch.long)).logits.any()


# ---- the optimizers' rules and weight decay ------------------------------------------------------------


def group_lrs(optimizer) -> dict[str, float]:
    """{"<group> lr": lr, "<group> wd": weight decay} (a Muon group's name with /muon)."""
    out = {}
    for g in optimizer.param_groups:
        name = g["name"] + ("/muon" if g.get("use_muon") else "")
        out |= {f"{name} lr": g["lr"], f"{name} wd": g["weight_decay"]}
    return out


def expected(**groups: tuple[float, float]) -> dict[str, float]:
    return {f"{name.replace('_muon', '/muon')} {key}": value
            for name, pair in groups.items() for key, value in zip(("lr", "wd"), pair, strict=True)}


def test_learning_rates_and_weight_decay_per_group_follow_table_8():
    config = {**TINY, "n_embd": 128, "tie_embeddings": False, "parametrization": "mup", "mup_base_width": 32}
    model, m, lr, wd = gpt(0, **config), 4.0, 1e-3, 0.1
    adam = expected(hidden=(lr / m, wd * m), embedding=(lr, 0.0), vector=(lr, 0.0), readout=(lr, wd))
    for optimizer in (AdamW(model, lr=lr, weight_decay=wd), Lion(model, lr=lr, weight_decay=wd),
                      grouped(model, "torch.optim.AdamW", lr=lr, weight_decay=wd)):
        assert group_lrs(optimizer) == pytest.approx(adam)
    # SGD: vector-like weights (one dimension grows) lr x m, hidden lr x fan_out/fan_in (= 1 here)
    sgd = SGD(model, lr=lr, weight_decay=wd)
    assert group_lrs(sgd) == pytest.approx(expected(hidden=(lr, wd), embedding=(lr * m, 0.0),
                                                    vector=(lr * m, 0.0), readout=(lr * m, wd / m)))
    # Muon: its orthogonalised hidden update needs no multiplier; its AdamW part follows Adam's rule
    muon = Muon(model, lr=0.02, weight_decay=wd, adamw_lr=lr)
    assert group_lrs(muon) == pytest.approx(expected(hidden_muon=(0.02, wd), embedding=(lr, 0.0),
                                                     vector=(lr, 0.0), readout=(lr, wd)))
    rms = Muon(model, lr=0.02, adjust_lr_fn="match_rms_adamw")
    assert group_lrs(rms)["hidden/muon lr"] == pytest.approx(0.02 / 2)  # / sqrt(max(fan_in, fan_out) ratio)


@pytest.mark.parametrize("factory", [lambda m: AdamW(m, lr=1e-2, weight_decay=0.1),
                                     lambda m: grouped(m, "torch.optim.AdamW", lr=1e-2, weight_decay=0.1)],
                         ids=["adamw", "torch_adamw"])
def test_decoupled_weight_decay_shrinks_every_width_by_the_standard_factor(factory):
    """The convention: lr x wd per group as in the standard parametrization (hidden: lr/m, wd x m)."""
    for width in (32, 128):
        model = gpt(0, **{**TINY, "n_embd": width}, parametrization="mup", mup_base_width=32)
        optimizer = factory(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # Adam's update is then exactly 0: only the decay acts
        optimizer.step()
        for name, p in model.named_parameters():
            decayed = p.ndim == 2 and "wte" not in name and "wpe" not in name
            torch.testing.assert_close(p, before[name] * (1 - 1e-2 * 0.1) if decayed else before[name],
                                       rtol=1e-7, atol=0)


@pytest.mark.parametrize("schedule", [lambda o: WarmupCosine(o, warmup_steps=3, total_steps=12, min_lr_ratio=0.1),
                                      lambda o: WSD(o, warmup_steps=3, total_steps=12, decay_fraction=0.5)],
                         ids=["cosine", "wsd"])
def test_schedules_scale_each_group_relative_to_its_own_base_lr(schedule):
    model = gpt(0, **{**TINY, "n_embd": 128}, parametrization="mup", mup_base_width=32)
    optimizer = AdamW(model, lr=1e-2)
    base = {g["name"]: g["lr"] for g in optimizer.param_groups}  # set at construction: base x multiplier
    scheduler = schedule(optimizer)
    assert base["hidden"] == pytest.approx(1e-2 / 4) and base["embedding"] == pytest.approx(1e-2)
    for step in range(12):
        multiplier = scheduler.multiplier(step)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(base[group["name"]] * multiplier, rel=1e-12)
        optimizer.step()
        scheduler.step()


# ---- Muon: its updates are already width-independent in spectral norm --------------------------------


def spectral_update_ratio(width: int, make_optimizer) -> float:
    """Mean over hidden matrices of ||W_1 - W_0||_2 / ||W_0||_2 after one step of a μP model."""
    model = gpt(0, **{**TINY, "n_embd": width}, parametrization="mup", mup_base_width=32)
    hidden = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 2 and "blocks" in n}
    one_step(model, make_optimizer(model), zipf_tokens(64, 8, 17, torch.Generator().manual_seed(1)))
    params = dict(model.named_parameters())
    ratios = [torch.linalg.matrix_norm(params[n].detach() - w0, 2) / torch.linalg.matrix_norm(w0, 2)
              for n, w0 in hidden.items()]
    return float(sum(ratios) / len(ratios))


def test_muon_needs_no_hidden_multiplier_and_adams_would_be_wrong():
    """Spectral condition (Yang, Simon & Bernstein 2023): a μP hidden update's spectral norm stays in
    proportion to the weight's at every width. Muon at lr x 1 does; Muon at Adam's lr / m shrinks as 1/m."""
    muon = lambda m: Muon(m, lr=0.02, adamw_lr=3e-3)
    narrow, wide = spectral_update_ratio(32, muon), spectral_update_ratio(256, muon)
    assert 1 / 1.2 < wide / narrow < 1.2
    adam_rule_on_muon = lambda m: Muon([{"params": [p], "lr": 0.02 / (m.config.n_embd / 32)}
                                        for p in m.blocks.parameters() if p.ndim == 2], lr=0.02)
    narrow, wide = spectral_update_ratio(32, adam_rule_on_muon), spectral_update_ratio(256, adam_rule_on_muon)
    assert wide / narrow == pytest.approx(1 / 8, rel=0.2)
    adamw = lambda m: AdamW(m, lr=3e-3, weight_decay=0.0)
    assert 1 / 1.5 < spectral_update_ratio(256, adamw) / spectral_update_ratio(32, adamw) < 1.5


# ---- the coordinate check's goals, both ways ---------------------------------------------------------


def test_coordinate_check_is_flat_under_mup_and_not_under_standard():
    widths = (32, 64, 128, 256)
    rows = coord_check(lambda w, p: GPT(**{**TINY, "n_embd": w, "block_size": 32, "vocab_size": 256},
                                        parametrization=p, mup_base_width=64),
                       lambda m: AdamW(m, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
                       widths, steps=3, seeds=(0, 1), batch_size=4, seq_len=32)
    kinds = {r["layer"]: r["kind"] for r in rows}
    activation, change = width_ratios(rows, "mean_abs"), width_ratios(rows, "mean_abs_change")
    for step in (1, 2, 3):
        hidden = {layer: activation["mup", step, layer] for layer in kinds if kinds[layer] in HIDDEN_KINDS}
        assert len(hidden) == 5 and all(1 / 1.5 <= r <= 1.5 for r in hidden.values()), (step, hidden)
        assert change["mup", step, "logits"] <= 1.5
        assert change["standard", step, "logits"] > 2
        assert max(activation["standard", step, layer] for layer in hidden) > 2  # standard's blocks grow


def test_cli_writes_the_table_and_plot(tmp_path):
    from lmlab.cli import mup

    result = mup.main(["coord-check", "model.n_layer=1", "model.n_head=2", "data.vocab_size=128", "--widths",
                       "16,32", "--steps", "1", "--seeds", "1", "--batch-size", "2", "--seq-len", "8",
                       "--out", str(tmp_path)])
    assert (tmp_path / "coord_check.png").stat().st_size > 0
    assert {(r["parametrization"], r["width"]) for r in result["rows"]} == {
        (p, w) for p in ("standard", "mup") for w in (16, 32)}
    assert result["ratios_widest_over_narrowest"]["mup"]["step 1"]["logits mean_abs_change"] > 0


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config,message", [
    (dict(TINY, readout_zero_init=True), "readout_zero_init=true: needs an untied readout"),
    (dict(TINY, parametrization="mup", mup_base_width=30), "mup_base_width=30: must be divisible by n_head=4"),
    (dict(LLAMA, n_head=2, n_kv_head=2, parametrization="mup", mup_base_width=6),
     "mup_base_width=6: with position='rope' the base model's head dimension"),
])
def test_bad_mup_arguments_name_the_parameter(config, message):
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(")):
        GPT(**config)


def test_an_optimizer_without_a_mup_rule_is_refused_before_it_is_built():
    model = gpt(0, **TINY, parametrization="mup", mup_base_width=16)
    with pytest.raises(ArgumentError, match=r"cls='torch.optim.Adafactor': has no μP learning-rate rule"):
        grouped(model, "torch.optim.Adafactor", lr=1e-3)
    grouped(gpt(0, **TINY), "torch.optim.Adafactor", lr=1e-3)  # a standard model: no rule needed
    # what the config layer runs before anything is built
    check_optimizer(AdamW)
    check_optimizer(grouped, cls="torch.optim.AdamW")
    with pytest.raises(ArgumentError, match=r"cls='torch.optim.Adafactor': has no μP learning-rate rule"):
        check_optimizer(grouped, cls="torch.optim.Adafactor")
    with pytest.raises(ArgumentError, match=r"_target_='torch.optim.Adafactor': has no μP"):
        check_optimizer(torch.optim.Adafactor)


def test_hf_models_refuse_mup():
    from lmlab.models.hf import HFCausalLM

    with pytest.raises(ArgumentError, match="parametrization='mup': μP is implemented for lmlab's GPT"):
        HFCausalLM.build("llama", None, vocab_size=64, parametrization="mup")


@pytest.mark.parametrize("args,message", [
    (["--widths", "64"], "--widths=64: needs at least two widths"),
    (["--widths", "30,64"], "--widths: 30 is not divisible by model.n_head=4"),
    (["model=hf"], "the coordinate check (and μP) needs lmlab's GPT"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    script = "import sys; from lmlab.cli.main import main; sys.exit(main())"  # what pip's `lmlab` script runs
    proc = subprocess.run([sys.executable, "-c", script, "mup", "coord-check", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_group_labels_are_distinct():
    assert group_labels([{"name": "decay", "use_muon": True}, {"name": "decay", "use_muon": False},
                         {"name": "no_decay"}, {}]) == ["decay/muon", "decay/adamw", "no_decay", "group3"]
