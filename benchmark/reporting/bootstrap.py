"""Percentile bootstrap over queries: intervals of means, the paired test, Spearman's rho.

Every statistic the reports interval is a mean of per-query values (Sim: the query's
similarity; R@5: 1 if the first relevant item ranks <= 5; MRR: 1 / rank; Q-Len: the query's
length), so one resampling scheme serves them all:

* ``B`` resamples of the ``n`` queries with replacement (``numpy.random.default_rng(seed)``,
  drawn in chunks so memory stays bounded at any ``n``), the statistic on each, and the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the ``B`` values (linear
  interpolation, as ``scipy.stats.bootstrap(method="percentile")``). Missing values (NaN:
  e.g. a skipped query) are left out of each resample's mean, as the metrics leave them out.
* Paired test of A vs B on the same queries: the per-query differences ``d = a - b`` are
  resampled (pairs stay together); the interval of ``mean(d)`` is the percentile interval,
  and the two-sided p-value is ``(1 + #{|d*_b - mean(d)| >= |mean(d)|}) / (B + 1)``: the
  resampled means, centred on the observed one, stand for the null distribution.
* Spearman's rho (ties get average ranks) between two per-query arrays, with the same
  percentile interval over resampled pairs.

The same seed gives the same resamples for the same ``n``: intervals do not depend on the
order in which a report computes them. Queries are resampled independently; captions of the
same image are correlated, so these intervals are, if anything, a little narrow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_MAX_CELLS = 4_000_000  # resampled values held at once (per chunk)


@dataclass(frozen=True)
class Interval:
    """A point estimate, its percentile interval and the number of queries it rests on."""

    value: float
    lo: float
    hi: float
    n: int

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a - b)`` over the shared queries, its interval and the two-sided p-value."""

    diff: float
    lo: float
    hi: float
    p_value: float
    n: int
    n_boot: int


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _resamples(n: int, n_boot: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
    """Index arrays ``[rows, n]`` whose rows together make ``n_boot`` resamples."""
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_CELLS // max(1, n * width))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def _percentiles(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return lo, hi


def _resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """``[rows, n]`` counts: how often each query is drawn in each resample (rows sum to n)."""
    for idx in _resamples(n, n_boot, seed):
        rows = idx.shape[0]
        flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, k]`` resampled means of the ``k`` columns of ``values`` (``[n]`` or ``[n, k]``),
    NaN-aware: a resample's mean of a column is over its non-NaN entries (NaN if none)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"bootstrap needs a non-empty [n] or [n, k] array, got shape {x.shape}")
    valid = ~np.isnan(x)
    filled = np.where(valid, x, 0.0)
    out = []
    for counts in _resample_counts(x.shape[0], n_boot, seed):
        sums, used = counts @ filled, counts @ valid.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(used > 0, sums / np.maximum(used, 1), np.nan))
    return np.concatenate(out, axis=0)


def mean_intervals(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[Interval]:
    """One :class:`Interval` of the mean per column of ``values`` (``[n]`` or ``[n, k]``)."""
    _check(n_boot, level)
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    boot = bootstrap_means(x, n_boot, seed)
    lo, hi = _percentiles(boot, level)
    out = []
    for j in range(x.shape[1]):
        col = x[:, j][~np.isnan(x[:, j])]
        point = float(col.mean()) if col.size else float("nan")
        out.append(Interval(point, float(lo[j]), float(hi[j]), int(col.size)))
    return out


def mean_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    return mean_intervals(np.asarray(values, dtype=np.float64).reshape(-1), n_boot, seed, level)[0]


def paired_differences(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[PairedDifference]:
    """Paired bootstrap of ``mean(a - b)`` per column; ``a`` and ``b`` hold the same queries in
    the same order (``[n]`` or ``[n, k]``). A query missing (NaN) in either is left out."""
    _check(n_boot, level)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have the same shape, got {a.shape} and {b.shape}")
    d = a - b
    d = d[:, None] if d.ndim == 1 else d
    boot = bootstrap_means(d, n_boot, seed)
    lo, hi = _percentiles(boot, level)
    out = []
    for j in range(d.shape[1]):
        col = d[:, j][~np.isnan(d[:, j])]
        if col.size == 0:
            out.append(PairedDifference(float("nan"), float("nan"), float("nan"), float("nan"), 0, n_boot))
            continue
        mean = float(col.mean())
        centred = np.abs(boot[:, j] - mean)
        extreme = int(np.sum(centred >= abs(mean) - 1e-12 * max(1.0, abs(mean))))
        p = (1 + extreme) / (n_boot + 1)
        out.append(PairedDifference(mean, float(lo[j]), float(hi[j]), min(1.0, p), int(col.size), n_boot))
    return out


def paired_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    return paired_differences(a, b, n_boot, seed, level)[0]


# -- Spearman's rho -------------------------------------------------------------------------


def _average_ranks_rows(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Average ranks (1-based, ties averaged) within each row of an integer code array."""
    rows, n = codes.shape
    keyed = codes + (np.arange(rows, dtype=np.int64) * n_codes)[:, None]
    flat = np.sort(keyed, axis=None)
    below = np.searchsorted(flat, keyed, side="left") - (np.arange(rows) * n)[:, None]
    upto = np.searchsorted(flat, keyed, side="right") - (np.arange(rows) * n)[:, None]
    return (below + upto + 1) / 2.0


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``[rows, n]`` arrays (NaN where a row is constant)."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    ux, cx = np.unique(x, return_inverse=True)
    uy, cy = np.unique(y, return_inverse=True)
    rx = _average_ranks_rows(cx.reshape(x.shape).astype(np.int64), len(ux))
    ry = _average_ranks_rows(cy.reshape(y.shape).astype(np.int64), len(uy))
    return _pearson_rows(rx, ry)


def _spearman_from_cells(counts: np.ndarray) -> np.ndarray:
    """Spearman's rho of each ``[rows, Ux, Uy]`` contingency table of two discrete variables
    (categories in increasing order; ties get average ranks)."""
    mx, my = counts.sum(axis=2), counts.sum(axis=1)
    rx = np.cumsum(mx, axis=1) - (mx - 1) / 2.0
    ry = np.cumsum(my, axis=1) - (my - 1) / 2.0
    centre = (counts.sum(axis=(1, 2)) + 1) / 2.0
    dx, dy = rx - centre[:, None], ry - centre[:, None]
    cov = np.einsum("rij,ri,rj->r", counts, dx, dy)
    den = np.sqrt((mx * dx * dx).sum(axis=1) * (my * dy * dy).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, cov / np.where(den > 0, den, 1.0), np.nan)


_MAX_CELLS_SPEARMAN = 10_000


def spearman_interval(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Spearman's rho of paired samples and its percentile interval (resampled pairs).

    When both variables take few values (complexity levels x query lengths) a resample is a
    multinomial draw of the counts of the (x, y) cells, which is the same distribution as
    resampling the pairs and costs nothing at any n; otherwise the pairs are resampled and
    ranked row by row. Resamples in which either variable is constant are left out."""
    _check(n_boot, level)
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"spearman needs two arrays of the same length >= 2, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    point = float(spearman_rows(x[None], y[None])[0])
    ux, cx = np.unique(x, return_inverse=True)
    uy, cy = np.unique(y, return_inverse=True)
    if len(ux) * len(uy) <= _MAX_CELLS_SPEARMAN:
        freq = np.bincount(cx * len(uy) + cy, minlength=len(ux) * len(uy)) / x.size
        draws = np.random.default_rng(seed).multinomial(x.size, freq, size=n_boot)
        boot = _spearman_from_cells(draws.reshape(n_boot, len(ux), len(uy)).astype(np.float64))
    else:
        boot = np.concatenate([spearman_rows(x[idx], y[idx]) for idx in _resamples(x.size, n_boot, seed, 4)])
    if np.isnan(boot).all():
        return Interval(point, float("nan"), float("nan"), int(x.size))
    lo, hi = _percentiles(boot[:, None], level)
    return Interval(point, float(lo[0]), float(hi[0]), int(x.size))
