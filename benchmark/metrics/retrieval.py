"""Exact, chunked retrieval metrics: the functional core of the suite's evaluation.

A direction (``t2i`` text->image, ``i2t`` image->text, ``i2i`` image->image) is evaluated
from a *score function* ``score_fn(start, stop) -> Tensor[stop - start, n_gallery]`` that
scores one chunk of queries against the whole gallery (so memory stays bounded; a
multi-vector model does its own late interaction, e.g. with
:func:`lightning_modules.base.max_sim`) and a :class:`~datamodules.base.Relevance`
(queries x gallery, CSR, any number of relevant items per query). Everything is
vectorised torch on the device of the scores; there is no Python loop over queries.

Definitions (exactly what the numbers mean)
-------------------------------------------
* **rank** of a query: the 1-based position of its *first* relevant item in the ranking of
  the gallery by descending score, i.e. of its best-scoring relevant item. **Ties count
  against the model**: ``rank = 1 + #{non-relevant, non-excluded items with score >= the
  best relevant score}``. Other relevant items never push the rank down. A constant scorer
  therefore gets the worst possible rank (``n_gallery - n_relevant + 1``), never R@1 = 1.
* **NaN scores** are treated as ``-inf`` (ranked last, tied with every other ``-inf``, and
  ties still count against the model). ``Sim`` is computed from the raw scores, so a NaN
  there propagates.
* **Skipped queries**: a query with no relevant item (after self-exclusion) gets rank 0, is
  left out of every rank-based metric, and is counted in ``n_skipped``.
* **exclude_self** (``i2i``, where the queries are the gallery): item ``i`` is removed from
  the ranking of query ``i`` (neither relevant nor a competitor), even if listed as relevant.
* **R@k**: hit rate -- the share (in [0, 1], not percent) of evaluated queries with at
  least one relevant item in the top k, i.e. ``rank <= k``. With one relevant item per
  query this is the usual Recall@k; it is what LAVIS and CLIP_benchmark call "recall@k".
* **MRR**: mean over evaluated queries of ``1 / rank`` over the full ranking (no cut-off).
* **mean_rank**, **median_rank**: mean and median of ``rank`` over evaluated queries.
* **Sim**: per query, the mean raw score of the query with its *source* items (``t2i``: the
  image the caption was written for; ``i2t``: the image's own captions); ``NaN`` for a query
  without source items. The summary is the mean over queries that have one. It is reported
  only for directions given a source (never for ``i2i``).
* ``n_queries`` (evaluated) and ``n_skipped`` are counts. When no query can be evaluated,
  the rank-based metrics are ``NaN``.

Flat metric keys always carry the direction: ``"t2i/R@1"``, ``"i2t/MRR"``, ``"t2i/Sim"`` ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.base import Relevance
from lightning_modules.base import Encoded

ScoreFn = Callable[[int, int], torch.Tensor]
#: gallery columns compared with a query's best relevant score at once (bounds the rank count's
#: temporaries; integer counts, so the block size never changes a rank)
RANK_BLOCK = 16384

__all__ = [
    "DirectionResult",
    "DirectionSpec",
    "ScoreFn",
    "dense_score_fn",
    "encoded_score_fn",
    "evaluate_direction",
    "evaluate_directions",
    "flatten_metrics",
    "higher_is_better",
    "retrieval_metrics",
    "source_relevance",
    "summarize",
    "transpose_relevance",
]


@dataclass(frozen=True)
class DirectionResult:
    """Per-query outcome of one direction.

    rank: int64 ``[n_queries]``, 1-based rank of the first relevant item; 0 = skipped.
    sim: float64 ``[n_queries]``, mean score with the source items (NaN where none), or
        None when the direction was evaluated without a source.
    n_gallery: size of the gallery the queries were ranked against.
    """

    rank: np.ndarray
    sim: np.ndarray | None
    n_gallery: int

    @property
    def evaluated(self) -> np.ndarray:
        """Boolean mask of the queries that have a relevant item."""
        return self.rank > 0


@dataclass(frozen=True)
class DirectionSpec:
    """Everything :func:`evaluate_direction` needs for one direction."""

    score_fn: ScoreFn
    relevance: Relevance
    source: Relevance | None = None
    exclude_self: bool = False

    @property
    def n_queries(self) -> int:
        return self.relevance.n_queries


# -- relevance helpers ------------------------------------------------------------------


def _csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> Relevance:
    """CSR from (row, col) pairs: duplicates dropped, columns sorted within each row."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"row indices must lie in [0, {n_rows})")
    if len(cols) and (cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"column indices must lie in [0, {n_cols})")
    keys = np.unique(rows * max(n_cols, 1) + cols)
    r, c = np.divmod(keys, max(n_cols, 1))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    return Relevance(indptr, c.astype(np.int64), n_cols)


def _row_ids(relevance: Relevance) -> np.ndarray:
    return np.repeat(np.arange(relevance.n_queries, dtype=np.int64), relevance.counts())


def _canonical(relevance: Relevance) -> Relevance:
    """The same relevance with duplicate entries removed (ranks would double-count ties)."""
    return _csr_from_pairs(_row_ids(relevance), relevance.indices, relevance.n_queries, relevance.n_gallery)


def transpose_relevance(relevance: Relevance) -> Relevance:
    """The transpose (gallery x queries, :meth:`Relevance.transpose`) without duplicate entries."""
    return _canonical(relevance.transpose())


def source_relevance(source: np.ndarray | Sequence[int], n_gallery: int) -> Relevance:
    """One source item per query (e.g. ``EvalSet.source``: caption -> own image) as CSR.

    A negative entry means "no source" for that query.
    """
    src = np.asarray(source, dtype=np.int64)
    has = src >= 0
    return _csr_from_pairs(np.flatnonzero(has), src[has], len(src), n_gallery)


# -- score functions --------------------------------------------------------------------


def dense_score_fn(scores: torch.Tensor) -> ScoreFn:
    """Score function over a precomputed ``[n_queries, n_gallery]`` matrix."""
    return lambda start, stop: scores[start:stop]


def encoded_score_fn(score: Callable[[Encoded, Encoded], torch.Tensor], queries: Encoded, gallery: Encoded) -> ScoreFn:
    """Score function that scores query chunks of ``queries`` against all of ``gallery``."""
    return lambda start, stop: score(queries[start:stop], gallery)


# -- the core ---------------------------------------------------------------------------


class _Pairs:
    """The (query, gallery item) pairs of a CSR relevance as torch index arrays, sliced per chunk."""

    def __init__(self, relevance: Relevance) -> None:
        self.indptr = relevance.indptr
        self.rows = torch.from_numpy(_row_ids(relevance))
        self.cols = torch.from_numpy(np.ascontiguousarray(relevance.indices, dtype=np.int64))

    def chunk(self, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the chunk, gallery column) of every pair of queries ``[start, stop)``."""
        if self.rows.device != device:
            self.rows, self.cols = self.rows.to(device), self.cols.to(device)
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return self.rows[lo:hi] - start, self.cols[lo:hi]


def _chunk_sim(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    q = scores.shape[0]
    vals = scores[rows, cols].double()
    sums = torch.zeros(q, dtype=torch.float64, device=scores.device).index_add_(0, rows, vals)
    counts = torch.bincount(rows, minlength=q).double()
    return sums / counts  # 0 / 0 = NaN where there is no source


def _nan_to_neg_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), -math.inf, x)


def _chunk_rank(
    scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, start: int, exclude_self: bool
) -> torch.Tensor:
    """1 + #(non-relevant, non-excluded items scoring >= the best relevant one); 0 if no relevant item.

    NaN = -inf without a pass over the whole chunk: a NaN compares False with any best score,
    i.e. ranks below it, which is right unless the best is -inf itself; then every
    candidate ties it and the count is the whole gallery.
    """
    q, n_gallery, device = scores.shape[0], scores.shape[1], scores.device
    if exclude_self:
        keep = cols != rows + start
        rows, cols = rows[keep], cols[keep]
    vals = _nan_to_neg_inf(scores[rows, cols])
    best = torch.full((q,), -math.inf, dtype=scores.dtype, device=device)
    best.scatter_reduce_(0, rows, vals, reduce="amax", include_self=True)
    has_pos = torch.bincount(rows, minlength=q) > 0
    # everything at or above the best relevant score, minus the relevant items among them
    # (an int32 count is exact and much faster than the default int64 sum of a bool tensor),
    # counted over blocks of gallery columns: the comparison and its int32 cast are
    # [q, RANK_BLOCK], not two more [q, n_gallery] arrays (500 MB at 1,000 x 100k)
    at_or_above = torch.zeros(q, dtype=torch.int32, device=device)
    for lo in range(0, n_gallery, RANK_BLOCK):
        at_or_above += (scores[:, lo : lo + RANK_BLOCK] >= best[:, None]).sum(1, dtype=torch.int32)
    at_or_above = at_or_above.long()
    at_or_above = torch.where(best == -math.inf, n_gallery, at_or_above)
    relevant_tied = torch.zeros(q, dtype=torch.int64, device=device)
    relevant_tied.scatter_add_(0, rows, (vals >= best[rows]).long())
    competitors = at_or_above - relevant_tied
    if exclude_self:
        own = torch.arange(q, device=device)
        competitors -= (_nan_to_neg_inf(scores[own, own + start]) >= best).long()
    return torch.where(has_pos, competitors + 1, torch.zeros_like(competitors))


def evaluate_direction(
    score_fn: ScoreFn,
    relevance: Relevance,
    *,
    n_queries: int,
    source: Relevance | None = None,
    exclude_self: bool = False,
    chunk_size: int = 1024,
    shard: tuple[int, int] = (0, 1),
) -> DirectionResult:
    """Rank every query's relevant items against the whole gallery, chunk by chunk.

    ``score_fn(start, stop)`` must return ``[stop - start, relevance.n_gallery]`` scores
    (higher = better). See the module docstring for the exact definitions of rank, ties,
    skipped queries and Sim.

    ``shard = (i, n)``: score only the chunks ``c`` with ``c mod n == i`` (one rank's share of
    a distributed evaluation); the other queries get rank 0 and Sim 0.0, so that the
    element-wise *sum* of the ``n`` shards' arrays is the whole result, bit for bit (every
    chunk is the chunk a single process scores).
    """
    part, parts = shard
    if not 0 <= part < parts:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if relevance.n_queries != n_queries:
        raise ValueError(f"relevance has {relevance.n_queries} query rows, expected n_queries={n_queries}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_gallery = relevance.n_gallery
    if exclude_self and n_gallery != n_queries:
        raise ValueError(f"exclude_self needs queries == gallery, got {n_queries} queries and {n_gallery} items")
    if source is not None and (source.n_queries != n_queries or source.n_gallery != n_gallery):
        raise ValueError(
            f"source is {source.n_queries} x {source.n_gallery}, expected {n_queries} x {n_gallery} like relevance"
        )
    rel_pairs = _Pairs(_canonical(relevance))
    src_pairs = None if source is None else _Pairs(source)

    rank = np.zeros(n_queries, dtype=np.int64)
    sim = None if source is None else np.full(n_queries, np.nan)
    for start in range(part * chunk_size, n_queries, parts * chunk_size):
        stop = min(start + chunk_size, n_queries)
        scores = score_fn(start, stop)
        if tuple(scores.shape) != (stop - start, n_gallery):
            raise ValueError(
                f"score_fn({start}, {stop}) returned shape {tuple(scores.shape)}, expected {(stop - start, n_gallery)}"
            )
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.float()
        if src_pairs is not None and sim is not None:
            rows, cols = src_pairs.chunk(start, stop, scores.device)
            sim[start:stop] = _chunk_sim(scores, rows, cols).cpu().numpy()
        rows, cols = rel_pairs.chunk(start, stop, scores.device)
        rank[start:stop] = _chunk_rank(scores, rows, cols, start, exclude_self).cpu().numpy()
        del scores  # not held while the next chunk is scored
    if sim is not None and parts > 1:
        mine = (np.arange(n_queries) // chunk_size) % parts == part
        sim[~mine] = 0.0
    return DirectionResult(rank=rank, sim=sim, n_gallery=n_gallery)


def summarize(result: DirectionResult, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k, MRR, mean/median rank, Sim and query counts of one direction (plain Python numbers)."""
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {tuple(ks)}")
    ranks = result.rank[result.rank > 0].astype(np.float64)
    n = len(ranks)
    nan = float("nan")
    out: dict[str, float] = {f"R@{int(k)}": float(np.mean(ranks <= k)) if n else nan for k in ks}
    out["MRR"] = float(np.mean(1.0 / ranks)) if n else nan
    out["mean_rank"] = float(np.mean(ranks)) if n else nan
    out["median_rank"] = float(np.median(ranks)) if n else nan
    if result.sim is not None:
        has = ~np.isnan(result.sim)
        out["Sim"] = float(np.mean(result.sim[has])) if has.any() else nan
    out["n_queries"] = n
    out["n_skipped"] = int(len(result.rank) - n)
    return out


def evaluate_directions(
    specs: Mapping[str, DirectionSpec], *, chunk_size: int = 1024, shard: tuple[int, int] = (0, 1)
) -> dict[str, DirectionResult]:
    """:func:`evaluate_direction` for each named direction (``shard``: one rank's share of the chunks)."""
    return {
        name: evaluate_direction(
            s.score_fn,
            s.relevance,
            n_queries=s.n_queries,
            source=s.source,
            exclude_self=s.exclude_self,
            chunk_size=chunk_size,
            shard=shard,
        )
        for name, s in specs.items()
    }


def flatten_metrics(results: Mapping[str, DirectionResult], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"t2i/R@1": ..., "t2i/MRR": ..., "i2t/R@1": ...}``: the direction in every key."""
    return {f"{name}/{key}": value for name, r in results.items() for key, value in summarize(r, ks).items()}


def retrieval_metrics(
    specs: Mapping[str, DirectionSpec], *, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024
) -> dict[str, float]:
    """Evaluate several directions and return the flat metric dict."""
    return flatten_metrics(evaluate_directions(specs, chunk_size=chunk_size), ks)


def higher_is_better(key: str) -> bool | None:
    """Whether a (flat or bare) metric key improves upwards; None for counts."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("R@") or name in ("MRR", "Sim"):
        return True
    if name in ("mean_rank", "median_rank"):
        return False
    return None
