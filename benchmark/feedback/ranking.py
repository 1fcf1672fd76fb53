"""Ranks and the displayed top items of a chunk of queries, with excluded items removed.

The same definition as the suite's evaluation (``benchmark/metrics/retrieval.py``): the
rank of a query is ``1 + #{non-relevant, non-excluded items scoring >= its best relevant
item}`` (ties count against the model; NaN scores count as -inf; 0 when the query has no
relevant item). Excluded items -- shown and marked non-relevant in an arm that drops
them -- are neither competitors nor shown again. Ranks are 1-based.
"""

from __future__ import annotations

import math

import torch

RANK_BASE = 1


def _clean(scores: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(scores), -math.inf, scores.float())


def ranks(scores: torch.Tensor, relevant: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """``[Q]`` int64 ranks of ``[Q, G]`` scores given ``[Q, G]`` boolean relevance and exclusion."""
    s = _clean(scores)
    best = torch.where(relevant, s, torch.full_like(s, -math.inf)).amax(1)
    competitors = (~relevant) & (s >= best[:, None])
    if excluded is not None:
        competitors &= ~excluded
    has = relevant.any(1)
    return torch.where(has, competitors.sum(1) + RANK_BASE, torch.zeros_like(best, dtype=torch.long))


def top_shown(scores: torch.Tensor, excluded: torch.Tensor, display: int) -> torch.Tensor:
    """``[Q, display]`` gallery indices the user sees: the best-scoring items not excluded,
    in ranking order; equal scores are shown lowest index first."""
    s = _clean(scores)
    s = torch.where(torch.isinf(s) & (s < 0), torch.finfo(s.dtype).min, s)  # -inf items still beat excluded ones
    s = s.masked_fill(excluded, -math.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return order[:, :display]
