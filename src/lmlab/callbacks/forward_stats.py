"""The interface between a LightningModule and the StabilityMonitor for statistics of the forward pass.

Gradients and parameters the monitor reads itself; what happens inside the forward (the logits) only
the module sees. A module that implements ``ForwardStatsSource`` gets those statistics logged under
``stability/``; any other module still gets every gradient, parameter and update statistic.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ForwardStatsSource(Protocol):
    def request_forward_stats(self) -> None:
        """Collect statistics in the next training step (the monitor asks only on its logging steps)."""

    def pop_forward_stats(self) -> dict[str, torch.Tensor]:
        """The statistics collected since the request, as 0-dim device tensors, and forget them.

        Keys starting with ``max_`` are reduced across ranks by maximum, the others by mean."""


@torch.no_grad()
def logit_stats(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Largest logit and the z-loss term mean(logsumexp^2): both grow before a logit divergence."""
    lse = torch.logsumexp(logits.float(), dim=-1)
    return {"max_logit": logits.max().float(), "z_loss": lse.pow(2).mean()}


class LogitStats:
    """``ForwardStatsSource`` for a language model: call ``record_logits`` in ``training_step``."""

    _forward_stats_wanted: bool = False
    _forward_stats: dict[str, torch.Tensor] | None = None

    def request_forward_stats(self) -> None:
        self._forward_stats_wanted = True

    def record_logits(self, logits: torch.Tensor) -> None:
        if self._forward_stats_wanted:
            self._forward_stats = logit_stats(logits.detach())

    def pop_forward_stats(self) -> dict[str, torch.Tensor]:
        stats, self._forward_stats, self._forward_stats_wanted = self._forward_stats or {}, None, False
        return stats
