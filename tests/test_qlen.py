"""Query-length statistics against direct computations."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from benchmark.metrics.qlen import qlen_metrics, spearman


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, size=200)
    b = a * 3 + rng.integers(0, 8, size=200)
    assert abs(spearman(a, b) - spearmanr(a, b).statistic) < 1e-12
    assert np.isnan(spearman(a, np.ones(200)))


def test_qlen_metrics_per_level_and_histogram():
    lengths = np.array([10, 10, 20, 30, 30, 30])
    level = np.array([1, 1, 2, 3, 3, 3])
    m = qlen_metrics(lengths, level)
    assert m["qlen/mean"] == 130 / 6 and m["qlen/level_1"] == 10 and m["qlen/level_3"] == 30
    assert m["qlen/hist_30"] == 0.5 and m["qlen/spearman_complexity"] == 1.0
    assert qlen_metrics(np.full(6, -1), level) == {}  # a model without lengths
