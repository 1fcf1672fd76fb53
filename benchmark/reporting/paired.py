"""Paired comparison of two runs on the same queries: per-measure differences with intervals.

Checks that both runs scored the same queries in the same order
(:func:`~benchmark.reporting.per_query.check_same_queries`, which raises
:class:`~benchmark.reporting.per_query.PairingError` otherwise), then runs the paired
bootstrap (:func:`~benchmark.reporting.bootstrap.paired_differences`) on every per-query
measure both runs have (Sim, R@5, MRR, Q-Len), all on the same resamples.
"""

from __future__ import annotations

import numpy as np

from benchmark.reporting.bootstrap import PairedDifference, paired_differences
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.per_query import MEASURES, check_same_queries


def compare_runs(
    a: dict, b: dict, options: ReportOptions, measures: tuple[str, ...] = MEASURES
) -> dict[str, PairedDifference]:
    """``{measure: mean(a - b) with interval and p}`` for the measures both runs have."""
    qa, qb = check_same_queries(a, b, options.direction)
    shared = [m for m in measures if qa.get(m) is not None and qb.get(m) is not None]
    if not shared:
        return {}
    xa = np.stack([qa.columns[m] for m in shared], axis=1)
    xb = np.stack([qb.columns[m] for m in shared], axis=1)
    diffs = paired_differences(xa, xb, options.n_boot, options.seed, options.level)
    return dict(zip(shared, diffs, strict=True))


def describe_difference(label: str, d: PairedDifference, digits: int = 4) -> str:
    return f"Δ{label} = {d.diff:+.{digits}f} [{d.lo:+.{digits}f}, {d.hi:+.{digits}f}], p = {d.p_value:.3g}, n = {d.n}"
