"""Knowledge-distillation KL divergence between softened teacher and student distributions."""

from __future__ import annotations

import torch

from lmlab.errors import ArgumentError
from lmlab.numerics import at_least_float32


def kl_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of ``softmax(logits / temperature)``, times temperature^2 (Hinton et al.).

    Summed over the vocabulary (last dim), averaged over every other position. Both sides are
    ``log_softmax``-ed, never ``p * log(p / (q + eps))``; vocabulary entries the teacher gives
    probability 0 (e.g. -inf logits) contribute exactly 0. The T^2 factor keeps gradient magnitudes
    comparable across temperatures, so the KL term can be weighted against cross-entropy.
    """
    if not temperature > 0:
        raise ArgumentError("temperature", temperature, "must be a number > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kl_divergence: student shape {tuple(student_logits.shape)} != "
            f"teacher shape {tuple(teacher_logits.shape)}"
        )
    log_q = torch.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    log_p = torch.log_softmax(at_least_float32(teacher_logits) / temperature, dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(dim=-1).mean() * temperature**2
