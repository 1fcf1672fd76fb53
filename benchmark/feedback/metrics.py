"""Per-round metrics of interactive retrieval (ChatIR, NeurIPS 2023; PlugIR, ACL 2024).

Input: the 1-based rank of each query's first relevant item at every round,
``ranks[t, q]`` for t = 0..T (0 = the query has no relevant item: left out and counted).
Definitions (exactly what the numbers mean):

* ``p_t`` -- the best rank so far, ``min(ranks[0..t])``.
* **Hits@K** (cumulative) at round t -- share of queries with ``p_t <= K``: a relevant item
  was in the top K at some round so far.
* **R@K** (instantaneous) at round t -- share with ``ranks[t] <= K``.
* **MRR**, **median_rank**, **mean_rank** at round t -- of ``ranks[t]``.
* **BRI** (PlugIR's best-log-rank integral, natural log, lower is better) -- for T >= 1 the
  mean over queries of ``(1/2T)(log p_0 + log p_T) + (1/T) sum_{t=1..T-1} log p_t`` (the
  trapezoid rule over rounds scaled to [0, 1]); the per-round series reports, at round t,
  the BRI of the first t rounds (T = t), and at round 0 the mean ``log p_0``.
* **rounds to success** -- the first round t with ``ranks[t] <= success_k`` (-1 = never);
  summarised as the mean and median over found queries and the share **never found**.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "best_so_far",
    "bri",
    "bri_by_query",
    "bri_series",
    "hits_by_query",
    "per_round",
    "rounds_to_success",
    "summary",
]


def _evaluated(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 2 or ranks.shape[0] < 1:
        raise ValueError(f"ranks must be [rounds + 1, queries], got shape {ranks.shape}")
    keep = (ranks > 0).all(0)
    if ((ranks > 0).any(0) & ~keep).any():
        raise ValueError("a query's rank is 0 (no relevant item) at some rounds only")
    return ranks[:, keep]


def best_so_far(ranks: np.ndarray) -> np.ndarray:
    """``p[t, q] = min(ranks[0..t, q])``."""
    return np.minimum.accumulate(np.asarray(ranks, dtype=np.int64), axis=0)


def bri_by_query(ranks: np.ndarray) -> np.ndarray:
    """``[T + 1, Q]``: row t holds each query's BRI over the first t rounds (row 0: its
    ``log p_0``); NaN for a query without a relevant item (rank 0)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    _evaluated(ranks)  # shape and consistency checks
    keep = (ranks > 0).all(0)
    log_p = np.log(best_so_far(np.where(keep, ranks, 1)).astype(np.float64))
    out = np.empty_like(log_p)
    out[0] = log_p[0]
    if log_p.shape[0] > 1:
        t = np.arange(1, log_p.shape[0], dtype=np.float64)[:, None]
        inner = np.cumsum(log_p, axis=0)[:-1] - log_p[0]  # sum_{s=1..t-1} log p_s
        out[1:] = ((log_p[0] + log_p[1:]) / 2 + inner) / t
    out[:, ~keep] = np.nan
    return out


def hits_by_query(ranks: np.ndarray, k: int) -> np.ndarray:
    """``[T + 1, Q]``: 1.0 where the best rank so far is <= k, else 0.0; NaN without a relevant item."""
    ranks = np.asarray(ranks, dtype=np.int64)
    _evaluated(ranks)
    keep = (ranks > 0).all(0)
    out = (best_so_far(ranks) <= k).astype(np.float64)
    out[:, ~keep] = np.nan
    return out


def _mean_or_nan(row: np.ndarray) -> float:
    row = row[~np.isnan(row)]
    return float(row.mean()) if row.size else float("nan")


def bri(ranks: np.ndarray) -> float:
    """PlugIR's BRI over all rounds of ``ranks`` (T = rounds - 1 >= 1); NaN without queries."""
    if np.asarray(ranks).ndim == 2 and np.asarray(ranks).shape[0] < 2:
        raise ValueError("BRI needs at least two rankings (T >= 1)")
    return _mean_or_nan(bri_by_query(ranks)[-1])


def bri_series(ranks: np.ndarray) -> list[float]:
    """BRI of the first t rounds for t = 0..T (round 0: the mean log p_0)."""
    return [_mean_or_nan(row) for row in bri_by_query(ranks)]


def rounds_to_success(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per query, the first round with ``rank <= k``; -1 where never (or no relevant item)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    hit = (ranks > 0) & (ranks <= k)
    first = np.argmax(hit, axis=0)
    return np.where(hit.any(0), first, -1)


def per_round(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, list]:
    """The per-round table: ``{"round": [0..T], "Hits@K": [...], "R@K": [...], "MRR": [...],
    "median_rank": [...], "mean_rank": [...], "BRI": [...]}`` (lists of length T + 1)."""
    r = _evaluated(ranks)
    n_rounds = r.shape[0]
    table: dict[str, list] = {"round": list(range(n_rounds))}
    if r.shape[1] == 0:
        nan = [float("nan")] * n_rounds
        table.update({f"Hits@{k}": nan for k in ks} | {f"R@{k}": nan for k in ks})
        table.update(MRR=nan, median_rank=nan, mean_rank=nan, BRI=nan)
        return table
    best = best_so_far(r)
    for k in ks:
        table[f"Hits@{k}"] = [float(x) for x in (best <= k).mean(1)]
    for k in ks:
        table[f"R@{k}"] = [float(x) for x in (r <= k).mean(1)]
    table["MRR"] = [float(x) for x in (1.0 / r).mean(1)]
    table["median_rank"] = [float(x) for x in np.median(r, axis=1)]
    table["mean_rank"] = [float(x) for x in r.mean(1)]
    table["BRI"] = bri_series(r)
    return table


def summary(ranks: np.ndarray, success_k: int) -> dict[str, float | int | None]:
    """Rounds to success (mean, median over found queries), share never found, counts."""
    ranks = np.asarray(ranks, dtype=np.int64)
    evaluated = np.asarray((ranks > 0).all(0))
    found_at = rounds_to_success(ranks, success_k)[evaluated]
    found = found_at >= 0
    n = int(evaluated.sum())
    return {
        "success_k": int(success_k),
        "rounds_to_success_mean": float(found_at[found].mean()) if found.any() else None,
        "rounds_to_success_median": float(np.median(found_at[found])) if found.any() else None,
        "never_found": float(1.0 - found.mean()) if n else None,
        "n_queries": n,
        "n_skipped": int(len(evaluated) - n),
    }
