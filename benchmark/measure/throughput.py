"""Throughput: items per second of a step function, measured the way the field expects.

Fixed batch size (recorded), warm-up iterations first, then at least ``runs`` timed runs
and at least ``min_time_s`` of timing; the median (and p90) of the per-run rates is
reported, and the cold first call separately. On a GPU every timed region is closed with
``torch.cuda.synchronize()``. The thread count is pinned by the caller and recorded here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Throughput:
    items_per_s: float  # median over timed runs
    items_per_s_p90: float  # 90th percentile of per-run time -> the slow tail, as a rate
    cold_first_call_s: float
    batch_size: int
    timed_runs: int
    warmup_runs: int
    torch_threads: int
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_throughput(
    step: Callable[[], object],
    batch_size: int,
    *,
    device: str = "cpu",
    warmup: int = 3,
    runs: int = 5,
    min_time_s: float = 1.0,
    max_runs: int = 1000,
) -> Throughput:
    """Time ``step()`` (which processes ``batch_size`` items) after a cold call and warm-up."""
    if batch_size < 1 or runs < 5 or warmup < 0:
        raise ValueError("measure_throughput needs batch_size >= 1, runs >= 5 (median of at least 5), warmup >= 0")
    with torch.inference_mode():
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        cold = time.perf_counter() - t
        for _ in range(warmup):
            step()
        _sync(device)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_runs and (len(times) < runs or time.perf_counter() - start < min_time_s):
            t = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t)
    times.sort()
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return Throughput(
        items_per_s=batch_size / statistics.median(times),
        items_per_s_p90=batch_size / p90,
        cold_first_call_s=cold,
        batch_size=batch_size,
        timed_runs=len(times),
        warmup_runs=warmup,
        torch_threads=torch.get_num_threads(),
        device=device,
    )
