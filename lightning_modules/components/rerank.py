"""Two-stage retrieval: re-score the top k of each query with a pairwise scorer (BLIP-2 ITM).

As in LAVIS ``compute_sim_matrix``: for each query row of the first-stage (ITC) scores,
the top ``k`` gallery items are re-scored as ``pair_score + first_stage`` (BLIP-2: the ITM
class-1 logit averaged over the query outputs, plus the ITC similarity). LAVIS gives the
other items -100; here they keep their first-stage order but are shifted, per row, below
the lowest re-scored item, so that (a) every re-scored item outranks every other one and
(b) ranks beyond ``k`` -- which MRR and mean rank read -- stay the first-stage ranks.

Pairs are independent, so the order in which they are batched does not change a score. With
``pair_cost`` (e.g. each pair's text length: a batch is padded to its longest text) the pairs
are batched in cost order and the scores put back in place, so that a batch holds texts of
similar length: on the tiny benchmark ~25-33% fewer padded tokens per ITM pass. A batch also
ends where a pair costs more than ``1 + max_padding`` times the batch's first (cheapest)
pair, so no pair is padded by more than that share: with per-text query lengths (ours: L
from 8 to 32 on the tiny benchmark) two batches of 256 sorted pairs would otherwise run the
second one at the longest L. With
``pair_key`` (an integer per pair, equal exactly when two pairs have the same inputs, e.g.
(identical text, same image)) each distinct pair among those of one call is scored once
and its score shared (identical texts have identical top k; the evaluation calls it once
per chunk of queries, so duplicates across chunks are scored again).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_modules.components.length_groups import length_batches

#: ``pair_scorer(query_index [P], gallery_index [P]) -> [P]`` for flat lists of pairs
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``pair_cost(query_index [P], gallery_index [P]) -> [P]``: a sort key, cheap pairs first
PairCost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``pair_key(query_index [P], gallery_index [P]) -> [P]`` integers: equal keys, equal pair inputs
PairKey = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _distinct(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: the first position of each distinct key, and each position's distinct key."""
    _, inverse = torch.unique(keys, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), len(keys), dtype=torch.long, device=keys.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin"), inverse


def rerank_topk(
    first_stage: torch.Tensor,
    k: int,
    pair_scorer: PairScorer,
    batch_size: int = 1024,
    margin: float = 1.0,
    pair_cost: PairCost | None = None,
    pair_key: PairKey | None = None,
    max_padding: float = 0.25,
    in_place: bool = False,
) -> torch.Tensor:
    """``[Q, G]`` scores: the top-``k`` of each row re-scored, the rest shifted below them.

    ``pair_scorer`` is called on at most ``batch_size`` pairs at a time with indices into
    the rows and columns of ``first_stage``; with ``pair_cost``, pairs of similar cost share
    a batch (a stable sort, so equal costs keep their order; a batch holds no pair costing
    more than ``1 + max_padding`` times its cheapest); with ``pair_key``, only the first pair
    of each key is scored and its score given to the others of that key. ``in_place``: the
    result is written into ``first_stage`` (for a caller that no longer needs it: no second
    ``[Q, G]`` matrix); otherwise into one new matrix.

    Ties: the items tied with the row's (k+1)-th first-stage value (``topk(k + 1)``) are not
    re-scored even where ``topk(k)`` picked some of them (it picks tied items in no defined
    order): the whole group stays tied, below the re-scored items, so fewer than k are re-scored
    in that row and a tie never counts in the model's favour. NaN (which ``topk`` ranks first)
    is never re-scored and stays NaN; a row whose (k+1)-th value is NaN is left as it is.

    Precision: the shift is a float32 subtraction, so two first-stage scores closer than the
    float32 step at the shifted magnitude (about 1e-6 at a shift of 10) can become tied beyond
    the top k (a tie counts against the model; R@K up to k is untouched).

    Memory: besides the result, ``[Q, k + 1]`` values and indices; no ``[Q, G]`` mask or copy.
    """
    q, g = first_stage.shape
    k = min(int(k), g)
    if k <= 0 or q == 0:
        return first_stage if in_place else first_stage.clone()
    top_val, top_idx = first_stage.topk(k, dim=1)
    rows = torch.arange(q, device=first_stage.device)[:, None].expand(q, k).reshape(-1)
    cols = top_idx.reshape(-1)
    inverse = None
    if pair_key is not None:
        first, inverse = _distinct(pair_key(rows, cols).to(rows.device))
        rows, cols = rows[first], cols[first]
    order = costs = None
    if pair_cost is not None:
        costs, order = torch.sort(pair_cost(rows, cols).to(rows.device), stable=True)
        rows, cols = rows[order], cols[order]
    pair = torch.cat(
        [
            pair_scorer(rows[s:e], cols[s:e]).to(first_stage.dtype)
            for s, e in length_batches(len(rows), batch_size, costs, max_padding)
        ]
    )
    if order is not None:
        pair = torch.empty_like(pair).scatter_(0, order.to(pair.device), pair)
    if inverse is not None:
        pair = pair[inverse.to(pair.device)]
    rescored = pair.view(q, k) + top_val
    if k < g:
        rest_max = first_stage.topk(k + 1, dim=1).values[:, k:]
        # a tie across the k-th place: topk picked some of the tied items, arbitrarily; none of the
        # group is re-scored (it stays tied, among the rest), so a tie never turns into a win
        keep = top_val > rest_max
        lowest = rescored.masked_fill(~keep, float("inf")).amin(1, keepdim=True)
        # the others keep their order, below every re-scored item of the row
        shift = (rest_max - lowest + margin).clamp(min=0).nan_to_num(nan=0.0)
        out = first_stage.sub_(shift) if in_place else first_stage - shift
        rescored = torch.where(keep, rescored, out.gather(1, top_idx))
    else:
        out = first_stage if in_place else first_stage.clone()
    out.scatter_(1, top_idx, rescored)
    return out
