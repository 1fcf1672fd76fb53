"""What the report tables show for one run: each measure's value, with its interval when the
run has per-query values.

Measures (a registry, in table order; ``better`` decides the bold rule):

======== ===================== ======== ===================================================
name     label                 better   source
======== ===================== ======== ===================================================
sim      Sim                   higher   per-query ``<dir>/sim`` (interval), else ``<dir>/Sim``
r5       R@5                   higher   per-query ranks (interval), else ``<dir>/R@5``
mrr      MRR                   higher   per-query ranks (interval), else ``<dir>/MRR``
qlen     Q-Len                 none     per-query ``text_lengths`` (interval), else ``qlen/mean``
gflops   GFLOPs                lower    gallery + query side (:mod:`~benchmark.reporting.cost_split`:
                                        ours' gallery pass at L_max), else the first of GFLOPS_KEYS
gflops_g GFLOPs gallery        lower    per image: vision + the Q-Former pass the index stores
gflops_q GFLOPs query          lower    per instruction: text (+ QScaler) + one re-rank pair
memory   Memory (MB)           lower    ``memory_mb``
thr      Throughput (img/s)    higher   ``throughput_img_s``
======== ===================== ======== ===================================================

Q-Len has no direction: fewer queries are only better at equal accuracy, which the claims
test; the paper gives it no arrow either. Cost columns (GFLOPs, memory) are lower-is-better.
A value the result file does not hold stays missing (shown "–"), never filled in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.reporting import cost_split
from benchmark.reporting.bootstrap import mean_intervals
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.per_query import MEASURES as PER_QUERY_MEASURES
from benchmark.reporting.per_query import query_values

HIGHER, LOWER = "higher", "lower"
#: where a run's total GFLOPs may be recorded, first match wins (fvcore convention: multiply-adds)
GFLOPS_KEYS = ("gflops/total", "gflops/total_mean", "gflops/mean", "gflops")


@dataclass(frozen=True)
class Measure:
    name: str
    label: str
    better: str | None
    fmt: str  # format spec of the shown value (and of the bold comparison)
    metric_keys: tuple[str, ...]  # "{d}" is the direction
    derive: Callable[[Mapping[str, Any]], float | None] | None = None  # from the metrics; None -> the keys


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("sim", "Sim", HIGHER, ".4f", ("{d}/Sim",)),
        Measure("r5", "R@5", HIGHER, ".4f", ("{d}/R@5",)),
        Measure("mrr", "MRR", HIGHER, ".4f", ("{d}/MRR",)),
        Measure("qlen", "Q-Len", None, ".2f", ("qlen/mean",)),
        Measure("gflops", "GFLOPs", LOWER, ".4g", GFLOPS_KEYS, cost_split.total_gflops),
        Measure("gflops_g", "GFLOPs gallery", LOWER, ".4g", (), cost_split.gallery_gflops),
        Measure("gflops_q", "GFLOPs query", LOWER, ".4g", (), cost_split.query_gflops),
        Measure("memory", "Memory (MB)", LOWER, ",.0f", ("memory_mb",)),
        Measure("thr", "Throughput (img/s)", HIGHER, ",.2f", ("throughput_img_s",)),
    )
}


@dataclass(frozen=True)
class Cell:
    """A table cell: a value (None = missing), optionally its interval."""

    value: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def missing(self) -> bool:
        return self.value is None

    @classmethod
    def of(cls, value) -> Cell:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return cls(None)
        return cls(float(value))


def metric_value(result: dict, measure: Measure, direction: str) -> float | None:
    metrics: dict[str, Any] = result["metrics"] if isinstance(result.get("metrics"), dict) else {}
    if measure.derive is not None and (value := measure.derive(metrics)) is not None:
        return value
    for key in measure.metric_keys:
        cell = Cell.of(metrics.get(key.format(d=direction)))
        if not cell.missing:
            return cell.value
    return None


class Estimator:
    """Cells of every measure for a run; intervals computed once per run (memoised by file)."""

    def __init__(self, options: ReportOptions) -> None:
        self.options = options
        self._cache: dict[str, dict[str, Cell]] = {}

    def cells(self, result: dict) -> dict[str, Cell]:
        key = result.get("_path") or str(id(result))
        if key not in self._cache:
            self._cache[key] = self._compute(result)
        return self._cache[key]

    def _compute(self, result: dict) -> dict[str, Cell]:
        o = self.options
        cells = {name: Cell.of(metric_value(result, m, o.direction)) for name, m in MEASURES.items()}
        q = query_values(result, o.direction)
        if q is None or q.n == 0:
            return cells
        names = [m for m in PER_QUERY_MEASURES if q.get(m) is not None]
        matrix = np.stack([q.columns[m] for m in names], axis=1)
        for name, iv in zip(names, mean_intervals(matrix, o.n_boot, o.seed, o.level), strict=True):
            if iv.n and all(math.isfinite(v) for v in (iv.value, iv.lo, iv.hi)):
                cells[name] = Cell(iv.value, iv.lo, iv.hi)
        return cells
