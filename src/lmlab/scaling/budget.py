"""What hours or money buy in training FLOPs, in the units of `lmlab cost` (:mod:`lmlab.cost`).

Sustained training FLOP/s = devices x peak FLOP/s of one device x MFU. The peak is that of a named GPU
(the table `lmlab cost` uses) or of this machine (its GPU, or on CPU a measured matmul); the MFU is given,
or the median that the fitted runs measured (`perf/mfu` in their metrics.csv); the price of a device-hour
is given, or the one the runs were configured with (`callbacks.throughput.price_per_device_hour`).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.arguments import Fraction, Positive, PositiveInt, checked
from lmlab.errors import ArgumentError

SECONDS_PER_HOUR = 3600.0
Precision = Literal["bf16", "fp16", "tf32", "fp32"]  # the dtype columns of lmlab.cost.PEAK_FLOPS


@dataclass(frozen=True)
class Throughput:
    peak_flops: float  # of one device
    mfu: float
    devices: int = 1
    price_per_device_hour: float | None = None

    @property
    def flops_per_second(self) -> float:
        return self.devices * self.peak_flops * self.mfu

    @checked
    def flops_in(self, hours: Positive) -> float:
        """FLOPs trained in ``hours`` of wall-clock time on all devices."""
        return hours * SECONDS_PER_HOUR * self.flops_per_second

    @checked
    def flops_for(self, dollars: Positive) -> float:
        """FLOPs that ``dollars`` buy: device-hours at the price, spread over the devices."""
        if self.price_per_device_hour is None:
            raise ArgumentError("dollars", dollars, "needs the price of a device-hour")
        return self.flops_in(dollars / self.price_per_device_hour / self.devices)


@checked
def throughput_for(gpu: str | None = None, precision: Precision = "bf16", mfu: Fraction | None = None,
                   devices: PositiveInt = 1, price_per_device_hour: Positive | None = None,
                   runs: str | None = None) -> Throughput:
    """The throughput a budget in hours or money buys: ``gpu`` names a device of :data:`lmlab.cost.PEAK_FLOPS`
    (None: this machine, at ``precision`` on a GPU and float32 on CPU); ``mfu`` and the price default to
    what the runs in the directory ``runs`` measured and were configured with."""
    import torch

    from lmlab.cost import lookup_peak_flops, peak_flops_per_device
    from lmlab.devices import resolve_device

    if gpu is not None:
        peak = lookup_peak_flops(gpu, precision)
        if peak is None:
            raise ArgumentError("gpu", gpu, "no peak FLOP/s known for it at {precision}; give the peak of its "
                                "kind in lmlab.cost.PEAK_FLOPS terms, e.g. h100, a100, l4", precision=precision)
    else:
        device = resolve_device()
        on_gpu = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}
        peak = peak_flops_per_device(device, on_gpu[precision] if device.type == "cuda" else torch.float32)
    measured_mfu, price = measured_in_runs(Path(runs)) if runs else (None, None)
    if mfu is None:
        if measured_mfu is None or gpu is not None:
            raise ArgumentError("mfu", None, "is needed: the fraction of the peak that training reaches (the runs "
                                "measure it as perf/mfu on the machine they ran on; lmlab cost measures it too)")
        mfu = measured_mfu
    return Throughput(peak, mfu, devices, price_per_device_hour if price_per_device_hour is not None else price)


def measured_in_runs(path: Path) -> tuple[float | None, float | None]:
    """(median perf/mfu over the runs under ``path``, their configured price per device-hour)."""
    from omegaconf import OmegaConf

    runs = [path] if (path / "config.yaml").is_file() else [d for d in path.iterdir() if d.is_dir()]
    mfus, prices = [], []
    for run in runs:
        metrics = run / "metrics.csv"
        if metrics.is_file():
            with open(metrics, newline="", encoding="utf-8") as f:
                values = [row.get("perf/mfu") for row in csv.DictReader(f)]
            run_mfus = [float(v) for v in values if v not in (None, "")]
            if run_mfus:
                mfus.append(statistics.median(run_mfus))
        if (run / "config.yaml").is_file():
            price = OmegaConf.select(OmegaConf.load(run / "config.yaml"),
                                     "callbacks.throughput.price_per_device_hour")
            if isinstance(price, int | float) and price > 0:
                prices.append(float(price))
    return (statistics.median(mfus) if mfus else None), (statistics.median(prices) if prices else None)
