"""Spike detection against a rolling window, entirely on the device (no host sync per step)."""

from __future__ import annotations

import torch


class SpikeDetector:
    """Flags a value more than `threshold` standard deviations above the rolling mean of the last
    `window` finite values, once `warmup` values have been seen. State lives on the device.

    Spikes enter the window (a lasting level shift becomes the new normal, so a `skip` policy
    cannot stall a run forever); non-finite values do not (they would poison the statistics).
    """

    def __init__(self, window: int, warmup: int, threshold: float, device: torch.device):
        self.window, self.warmup, self.threshold = window, warmup, threshold
        self.values = torch.zeros(window, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.slots = torch.arange(window, device=device)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        n = self.count.clamp(max=self.window)  # values in the window; the empty slots hold 0
        mean = self.values.sum() / n.clamp(min=1)
        centered = torch.where(self.slots < n, self.values - mean, 0.0)
        std = (centered.square().sum() / (n - 1).clamp(min=1)).sqrt()
        finite = torch.isfinite(x)
        spike = finite & (self.count >= self.warmup) & (x > mean + self.threshold * std)
        self.values.copy_(torch.where(finite & (self.slots == self.count % self.window), x, self.values))
        self.count += finite
        self.mean, self.std = mean, std  # of the window this value was tested against
        return spike

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "count": self.count.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.count.copy_(state["count"])
