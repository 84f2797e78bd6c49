"""Losses against torch's references and a direct InfoNCE, plus extreme inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.losses import LanguageModelingLoss, cross_entropy, info_nce, kl_divergence, mse


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _logits_targets(gen, dtype=torch.float64, B=3, T=5, V=11):
    logits = torch.randn(B, T, V, generator=gen, dtype=dtype) * 3
    targets = torch.randint(0, V, (B, T), generator=gen)
    targets[0, :2] = -100
    targets[2, 4] = -100
    return logits, targets


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_matches_torch(gen, label_smoothing):
    logits, targets = _logits_targets(gen)
    logits.requires_grad_(True)
    ours = cross_entropy(logits, targets, label_smoothing=label_smoothing)
    (grad,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_cross_entropy_custom_ignore_index_and_all_ignored(gen):
    logits, targets = _logits_targets(gen)
    targets = torch.where(targets == -100, 7, targets)
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=7)
    torch.testing.assert_close(cross_entropy(logits, targets, ignore_index=7), ref, rtol=1e-12, atol=0)
    assert cross_entropy(logits, torch.full_like(targets, -100)).item() == 0.0  # 0, not NaN


def test_z_loss_adds_mean_squared_log_normaliser_over_kept_tokens(gen):
    logits, targets = _logits_targets(gen)
    keep = targets != -100
    lse = torch.logsumexp(logits, dim=-1)[keep]
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + 1e-3 * lse.square().mean()
    torch.testing.assert_close(cross_entropy(logits, targets, z_loss=1e-3), expected, rtol=1e-12, atol=0)


def test_bf16_logits_are_upcast(gen):
    logits, targets = _logits_targets(gen, dtype=torch.float32)
    ours = cross_entropy(logits.bfloat16(), targets)
    ref = F.cross_entropy(logits.bfloat16().float().flatten(0, 1), targets.flatten())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_language_modeling_loss_module(gen):
    logits, targets = _logits_targets(gen)
    module = LanguageModelingLoss(label_smoothing=0.1, z_loss=1e-4)
    expected = cross_entropy(logits, targets, label_smoothing=0.1, z_loss=1e-4)
    torch.testing.assert_close(module(logits, targets), expected, rtol=0, atol=0)


def test_mse_matches_torch(gen):
    pred, target = (torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(mse(pred, target), F.mse_loss(pred, target), rtol=1e-12, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_matches_torch_kl_div(gen, temperature):
    student = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64)
    ours = kl_divergence(student, teacher, temperature)
    ref = (
        F.kl_div(
            F.log_softmax(student / temperature, -1).flatten(0, 1),
            F.log_softmax(teacher / temperature, -1).flatten(0, 1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    g_ours, g_ref = (torch.autograd.grad(x, student)[0] for x in (ours, ref))
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-14)
    assert kl_divergence(teacher, teacher, temperature).abs().item() < 1e-14  # KL(p || p) = 0


def _direct_info_nce(a, b, tau):
    """-log(exp(s_ii) / sum_j exp(s_ij)) written out in float64, both directions."""
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    sim = (a @ b.T / tau).double()
    loss_ab = -(sim.diag().exp() / sim.exp().sum(dim=1)).log().mean()
    loss_ba = -(sim.diag().exp() / sim.exp().sum(dim=0)).log().mean()
    return (loss_ab + loss_ba) / 2


def test_info_nce_matches_direct_formula(gen):
    a, b = (torch.randn(6, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    b[:3] = a[:3] + 0.1 * b[:3]  # a few near-positives
    torch.testing.assert_close(info_nce(a, b, 0.2), _direct_info_nce(a, b, 0.2), rtol=1e-12, atol=0)
    # perfectly aligned, well separated pairs approach zero loss
    eye = torch.eye(6, dtype=torch.float64)
    assert info_nce(eye, eye, temperature=0.01).item() < 1e-20


def _finite_with_grad(loss, *inputs):
    grads = torch.autograd.grad(loss, inputs)
    return bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)


EXTREMES = {
    "huge": lambda: torch.tensor([[1e4, -1e4, 5e3, 0.0], [-1e4, -1e4, -1e4, 1e4]]),
    "one_hot": lambda: torch.tensor([[1e4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1e4]]),
    "all_equal": lambda: torch.full((2, 4), 3.0),
}


@pytest.mark.parametrize("case", EXTREMES)
def test_extreme_logits_give_finite_values_and_grads(case):
    logits = EXTREMES[case]().requires_grad_(True)
    targets = torch.tensor([1, 3])
    ce = cross_entropy(logits, targets, label_smoothing=0.1, z_loss=1e-4)
    assert _finite_with_grad(ce, logits)
    if case == "huge":  # -log p(target=1) for row 0 is 2e4, exactly representable
        assert cross_entropy(logits[:1], targets[:1]).item() == pytest.approx(2e4)
    if case == "all_equal":
        assert cross_entropy(logits, targets).item() == pytest.approx(math.log(4))
    teacher = EXTREMES[case]().flip(-1).requires_grad_(True)
    assert _finite_with_grad(kl_divergence(logits, teacher, temperature=2.0), logits, teacher)
    assert _finite_with_grad(mse(logits, teacher), logits, teacher)
    assert _finite_with_grad(info_nce(logits, teacher), logits, teacher)


def test_kl_with_exact_one_hot_teacher_is_student_cross_entropy():
    """A teacher with -inf logits puts probability exactly 0 there; those terms contribute 0, not NaN."""
    student = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    teacher = torch.tensor([[-math.inf, 0.0, -math.inf]])
    kl = kl_divergence(student, teacher)
    (grad,) = torch.autograd.grad(kl, student)
    torch.testing.assert_close(kl, F.cross_entropy(student, torch.tensor([1])))
    assert torch.isfinite(grad).all()


Z, LONG = torch.zeros, torch.long


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: cross_entropy(Z(2, 3), Z(2, dtype=LONG), label_smoothing=1.5),
            r"^label_smoothing=1\.5: must be a number in \[0, 1\]$",
        ),
        (lambda: cross_entropy(Z(2, 3), Z(2, dtype=LONG), z_loss=-1), r"^z_loss=-1: must be a number >= 0$"),
        (lambda: cross_entropy(Z(2, 3), Z(3, dtype=LONG)), r"targets of shape \(2,\)"),
        (lambda: LanguageModelingLoss(label_smoothing=-0.1), r"^label_smoothing=-0\.1: must be a number in \[0, 1\]$"),
        (lambda: kl_divergence(Z(2, 3), Z(2, 3), temperature=0), r"^temperature=0: must be a number > 0$"),
        (lambda: kl_divergence(Z(2, 3), Z(2, 4)), r"student shape \(2, 3\)"),
        (lambda: mse(Z(2, 3), Z(3)), r"pred shape \(2, 3\)"),
        (lambda: info_nce(Z(2, 3), Z(2, 3), temperature=-1), r"^temperature=-1: must be a number > 0$"),
        (lambda: info_nce(Z(2, 3), Z(3, 3)), r"\[N, D\]"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
