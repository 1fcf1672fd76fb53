"""Throughput of two models measured side by side: alternating rounds in one process.

Each ``bench run`` times its own model after its evaluation, so the ratio of two result
files' ``throughput_img_s`` mixes the models' cost with whatever the machine did in the
minutes between the runs. Here one round times model A, then model B (B first in every
odd round, so a steady drift cancels), each with
:func:`~benchmark.measure.throughput.measure_throughput` (cold call, warm-up, median of
>= 5 timed calls) on its own copy of the same input batch. The ratio A / B is taken within
each round; its median and range over the rounds are what a report should read.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.measure.throughput import measure_throughput


@dataclass(frozen=True)
class PairedThroughput:
    """Items per second of ``names[0]`` and ``names[1]``, one pair per round."""

    names: tuple[str, str]
    rounds: tuple[tuple[float, float], ...]
    batch_size: int
    timed_runs: int  # per model and round (the least; ``min_time_s`` may add more)
    warmup_runs: int
    torch_threads: int
    device: str

    @property
    def ratios(self) -> list[float]:
        """Per round: items/s of the first model over the second's."""
        return [a / b for a, b in self.rounds]

    def median(self, which: int) -> float:
        return statistics.median(r[which] for r in self.rounds)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_range(self) -> tuple[float, float]:
        return min(self.ratios), max(self.ratios)

    def to_dict(self) -> dict:
        lo, hi = self.ratio_range
        return {
            "names": list(self.names),
            "items_per_s": {name: [r[i] for r in self.rounds] for i, name in enumerate(self.names)},
            "ratio_per_round": self.ratios,
            "ratio_median": self.ratio,
            "ratio_min": lo,
            "ratio_max": hi,
            "batch_size": self.batch_size,
            "rounds": len(self.rounds),
            "timed_runs": self.timed_runs,
            "warmup_runs": self.warmup_runs,
            "torch_threads": self.torch_threads,
            "device": self.device,
            "order": "alternating: the first model first in even rounds, the second first in odd rounds",
        }


def paired_throughput(
    steps: tuple[tuple[str, Callable[[], object]], tuple[str, Callable[[], object]]],
    batch_size: int,
    *,
    rounds: int,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    min_time_s: float = 0.0,
) -> PairedThroughput:
    """Time two ``(name, step)`` pairs, each ``step()`` processing ``batch_size`` items, in
    ``rounds`` alternating rounds (see the module docstring)."""
    if rounds < 2:
        raise ValueError("paired_throughput needs rounds >= 2 (one round in each order)")
    (name_a, step_a), (name_b, step_b) = steps
    pairs: list[tuple[float, float]] = []
    timed, threads = 0, 0
    for r in range(rounds):
        order = ((0, step_a), (1, step_b)) if r % 2 == 0 else ((1, step_b), (0, step_a))
        rates = [0.0, 0.0]
        for i, step in order:
            tp = measure_throughput(step, batch_size, device=device, warmup=warmup, runs=repeats, min_time_s=min_time_s)
            rates[i] = tp.items_per_s
            timed = tp.timed_runs if not timed else min(timed, tp.timed_runs)
            threads = tp.torch_threads
        pairs.append((rates[0], rates[1]))
    return PairedThroughput((name_a, name_b), tuple(pairs), batch_size, timed, warmup, threads, device)
