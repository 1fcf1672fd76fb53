"""Bootstrap intervals of a feedback run: per arm and round, and each refinement arm minus exclude.

From the per-query ranks ``[T + 1, Q]`` of every arm, two per-query series per round
(:mod:`benchmark.feedback.metrics`): the cumulative hit (best rank so far <= K) and the
query's BRI over the first t rounds. Their means are the table's Hits@K and BRI; their
intervals are the percentile bootstrap over queries of
:mod:`benchmark.reporting.bootstrap` (``mean_intervals``), and the paired differences of an
arm and the baseline (``exclude``) resample the same queries for both
(``paired_differences``; the same seed gives the same resamples for every arm). Queries
without a relevant item (rank 0) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.feedback import metrics
from benchmark.reporting.bootstrap import Interval, PairedDifference, mean_intervals, paired_differences
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paired import describe_difference

BASELINE = "exclude"
#: arms never compared with the baseline (the no-feedback control)
CONTROLS = ("none", BASELINE)


@dataclass(frozen=True)
class ArmSeries:
    arm: str
    hits: list[Interval]  # per round 0..T
    bri: list[Interval]


@dataclass(frozen=True)
class ArmDifference:
    arm: str
    baseline: str
    hits: list[PairedDifference]  # per round: mean(arm - baseline)
    bri: list[PairedDifference]


@dataclass(frozen=True)
class FeedbackStats:
    k: int
    rounds: int
    series: dict[str, ArmSeries]
    differences: list[ArmDifference]


def _values(ranks: np.ndarray, k: int) -> np.ndarray:
    """``[Q, 2 (T + 1)]``: per query, the cumulative hit at each round, then the BRI at each round."""
    return np.concatenate([metrics.hits_by_query(ranks, k).T, metrics.bri_by_query(ranks).T], axis=1)


def feedback_stats(
    ranks: dict[str, np.ndarray], k: int, options: ReportOptions, baseline: str = BASELINE
) -> FeedbackStats:
    """Intervals of every arm of ``ranks`` and paired differences to ``baseline`` (if run)."""
    n_rounds = next(iter(ranks.values())).shape[0]
    values = {a: _values(r, k) for a, r in ranks.items()}
    o = options
    series = {}
    for arm, v in values.items():
        ivs = mean_intervals(v, o.n_boot, o.seed, o.level)
        series[arm] = ArmSeries(arm, ivs[:n_rounds], ivs[n_rounds:])
    differences = []
    if baseline in values:
        for arm, v in values.items():
            if arm in CONTROLS or arm == baseline:
                continue
            d = paired_differences(v, values[baseline], o.n_boot, o.seed, o.level)
            differences.append(ArmDifference(arm, baseline, d[:n_rounds], d[n_rounds:]))
    return FeedbackStats(k, n_rounds - 1, series, differences)


def report_rounds(rounds: int) -> list[int]:
    """The rounds the console and the notes single out: round 3 (the issue's target) and T."""
    return sorted({min(3, rounds), rounds})


def describe(stats: FeedbackStats, options: ReportOptions) -> list[str]:
    """Console lines: each arm's Hits@K and BRI with intervals, then the paired differences,
    at :func:`report_rounds`."""
    out = [f"{options.percent} bootstrap intervals over queries (B = {options.n_boot}, seed {options.seed}):"]
    for t in report_rounds(stats.rounds):
        for arm, s in stats.series.items():
            h, b = s.hits[t], s.bri[t]
            out.append(
                f"  round {t} {arm:<8} Hits@{stats.k} {h.value:.3f} [{h.lo:.3f}, {h.hi:.3f}]  "
                f"BRI {b.value:.3f} [{b.lo:.3f}, {b.hi:.3f}]  n = {h.n}"
            )
        for d in stats.differences:
            out.append(
                f"  round {t} {d.arm} - {d.baseline}: "
                + describe_difference(f"Hits@{stats.k}", d.hits[t], 3)
                + "; "
                + describe_difference("BRI", d.bri[t], 3)
            )
    return out
