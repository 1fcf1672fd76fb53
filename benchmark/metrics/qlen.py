"""Query-length statistics: how many query vectors a model spent per instruction.

For models with a per-query length (``Encoded.lengths``, e.g. the dynamic L of
BLIP2-IDQ-Former) this gives the mean, the spread, the distribution, the mean per caption
complexity level, and the Spearman correlation between complexity and length (ties get
average ranks). Keys: ``qlen/mean``, ``qlen/std``, ``qlen/min``, ``qlen/max``,
``qlen/level_<k>``, ``qlen/spearman_complexity``, ``qlen/hist_<L>`` (share of queries).
Models without lengths get no ``qlen/*`` keys.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end - 1) / 2.0 + 1.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties; NaN if either is constant."""
    ra, rb = _average_ranks(np.asarray(a, dtype=np.float64)), _average_ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def qlen_metrics(lengths: np.ndarray, complexity: np.ndarray) -> dict[str, float]:
    lengths = np.asarray(lengths)
    if lengths.size == 0 or (lengths < 0).any():
        return {}
    out = {
        "qlen/mean": float(lengths.mean()),
        "qlen/std": float(lengths.std()),
        "qlen/min": float(lengths.min()),
        "qlen/max": float(lengths.max()),
        "qlen/spearman_complexity": spearman(complexity, lengths),
    }
    for level in np.unique(complexity):
        out[f"qlen/level_{int(level)}"] = float(lengths[complexity == level].mean())
    values, counts = np.unique(lengths, return_counts=True)
    for v, c in zip(values, counts, strict=True):
        out[f"qlen/hist_{int(v)}"] = float(c / lengths.size)
    return out
