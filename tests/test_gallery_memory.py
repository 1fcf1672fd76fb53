"""The gallery held once at evaluation (issue 24, item 5: peak RSS at 100k images): the metric's
preallocated state buffers, blockwise first-stage scores written into one matrix, re-ranking
without full-size copies -- all giving, bit for bit, what the former code gave.

The former implementations are kept here as references (list of batches concatenated at
compute; blocks concatenated along the gallery; re-ranking with a clone, a ``[Q, G]`` mask and
its masked copy) and compared with the new code on small galleries, ties, NaN and -inf included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.metrics import RetrievalMetric
from benchmark.metrics.metric import joined
from benchmark.metrics.retrieval import DirectionSpec, encoded_score_fn, evaluate_directions
from lightning_modules.base import Encoded, blockwise_over_gallery, max_sim, scoring_view
from lightning_modules.components.rerank import rerank_topk
from tests.test_metrics import embeddings, small_eval_set


# -- the former code, as references -------------------------------------------------------------
def former_blockwise(score, queries: Encoded, gallery: Encoded, block: int) -> torch.Tensor:
    q = scoring_view(queries, "cpu")
    parts = [score(q, scoring_view(gallery[s : s + block], "cpu")) for s in range(0, max(len(gallery), 1), block)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def former_rerank(first_stage: torch.Tensor, k: int, pair_scorer, margin: float = 1.0) -> torch.Tensor:
    """The former code (a clone, a ``[Q, G]`` mask and its masked copy), row by row, with the tie
    rule of ``rerank_topk``'s docstring: items tied with the best of the rest are not re-scored."""
    q, g = first_stage.shape
    k = min(int(k), g)
    if k <= 0 or q == 0:
        return first_stage.clone()
    top_val, top_idx = first_stage.topk(k, dim=1)
    rows = torch.arange(q)[:, None].expand(q, k).reshape(-1)
    pair = pair_scorer(rows, top_idx.reshape(-1)).to(first_stage.dtype).view(q, k)
    out = first_stage.clone()
    if k == g:
        return out.scatter_(1, top_idx, pair + top_val)
    in_top = torch.zeros_like(first_stage, dtype=torch.bool).scatter_(1, top_idx, True)
    for r in range(q):
        rest = first_stage[r][~in_top[r]]
        rest_max = math.nan if bool(rest.isnan().any()) else float(rest.max())
        kept = [j for j in range(k) if float(top_val[r, j]) > rest_max]  # False for NaN on either side
        rescored = pair[r, kept] + top_val[r, kept]
        shift = 0.0
        if kept:
            shift = torch.clamp(rest_max - rescored.min() + margin, min=0).nan_to_num(nan=0.0)
        out[r] = first_stage[r] - shift
        out[r, top_idx[r, kept]] = rescored
    return out


def _pair_scorer(q: int, g: int, seed: int):
    table = torch.randn(q, g, generator=torch.Generator().manual_seed(seed))
    return lambda qi, gi: table[qi, gi]


def _first_stage(kind: str, q: int = 9, g: int = 23, seed: int = 0) -> torch.Tensor:
    x = torch.randn(q, g, generator=torch.Generator().manual_seed(seed))
    if kind == "ties":  # few distinct values: ties at and around the k-th
        x = (x * 2).round() / 2
    elif kind == "nan":
        x[0, :3] = math.nan  # fewer NaN than k: all in the top k
        x[1, :] = math.nan  # more than k: the rest's maximum is NaN
        x[2, 5] = math.nan
    elif kind == "inf":
        x[0, :] = -math.inf
        x[1, 4:] = -math.inf
        x[2, 1] = math.inf
    elif kind == "constant":
        x = torch.zeros(q, g)
    return x


@pytest.mark.parametrize("kind", ["random", "ties", "nan", "inf", "constant"])
@pytest.mark.parametrize("k", [0, 1, 4, 22, 23, 40])
@pytest.mark.parametrize("in_place", [False, True])
def test_rerank_topk_is_the_former_bit_for_bit(kind, k, in_place):
    first = _first_stage(kind)
    pair = _pair_scorer(*first.shape, seed=1)
    want = former_rerank(first.clone(), k, pair)
    given = first.clone()
    got = rerank_topk(given, k, pair, batch_size=5, in_place=in_place)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    if in_place:
        assert got.data_ptr() == given.data_ptr()  # no second [Q, G] matrix
    else:
        torch.testing.assert_close(given, first, rtol=0, atol=0, equal_nan=True)  # input untouched


@pytest.mark.parametrize("block", [1, 4, 7, 30, 31, 100])
def test_blockwise_writes_the_concatenated_blocks(block):
    g = embeddings(31, 3, tokens=4)
    q = embeddings(6, 5, tokens=2)
    gallery = Encoded(g, torch.arange(31) % 4 + 1)
    queries = Encoded(q, torch.tensor([1, 2, 2, 1, 2, 1]))
    want = former_blockwise(max_sim, queries, gallery, block)
    got = blockwise_over_gallery(max_sim, queries, gallery, "cpu", block=block)
    assert torch.equal(got, want)
    # fp16 storage: each block is widened to float32 as it is scored, the same numbers
    half = Encoded(g.half(), gallery.lengths)
    assert torch.equal(
        blockwise_over_gallery(max_sim, queries, half, "cpu", block=block),
        former_blockwise(max_sim, queries, half, block),
    )


# -- the metric's states ----------------------------------------------------------------------
def _feed(metric: RetrievalMetric, img: Encoded, txt: Encoded, img_order, txt_order, parts=(3, 4)) -> None:
    for part in np.array_split(np.asarray(img_order), parts[0]):
        idx = torch.from_numpy(part)
        metric.update_images(idx, img[idx])
    for part in np.array_split(np.asarray(txt_order), parts[1]):
        idx = torch.from_numpy(part)
        metric.update_texts(idx, txt[idx])


@pytest.mark.parametrize("storage", [None, torch.float16])
def test_states_are_one_buffer_written_in_place(storage):
    es = small_eval_set()
    img = Encoded(
        embeddings(es.n_images, 1, tokens=3),
        torch.full((es.n_images,), 2),
        extra={"tokens": embeddings(es.n_images, 3, tokens=2)},
    )
    txt = Encoded(embeddings(es.n_queries, 2), torch.arange(es.n_queries) % 4 + 1)
    metric = RetrievalMetric(es, max_sim, chunk_size=4, storage_dtype=storage)
    _feed(metric, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    parts = metric.image_emb
    assert len(parts) == 3 and len({p.untyped_storage().data_ptr() for p in parts}) == 1
    enc, _ = metric._collect("image", es.n_images)
    # the collected gallery is the buffer itself: no concatenation, no re-indexing copy
    assert (
        enc.emb.data_ptr() == parts[0].data_ptr()
        and enc.extra["tokens"].data_ptr() == metric.image_extra_tokens[0].data_ptr()
    )
    dtype = storage or torch.float32
    assert enc.emb.dtype == enc.extra["tokens"].dtype == dtype
    assert torch.equal(enc.emb, img.emb.to(dtype)) and torch.equal(enc.extra["tokens"], img.extra["tokens"].to(dtype))
    metric.reset()
    assert metric._state_buffers == {} and metric.image_emb == []


def test_more_rows_than_expected_start_a_new_buffer():
    es = small_eval_set()
    img = Encoded(embeddings(es.n_images, 1, tokens=3))
    metric = RetrievalMetric(es, max_sim)
    order = np.concatenate([np.arange(es.n_images), [0, 1, 2]])  # padded repeats, as a DistributedSampler adds
    for part in np.array_split(order, 4):
        metric.update_images(torch.from_numpy(part), img[torch.from_numpy(part)])
    storages = [p.untyped_storage().data_ptr() for p in metric.image_emb]
    assert len(set(storages)) == 2
    assert torch.equal(joined(metric.image_emb), img.emb[torch.from_numpy(order)])
    enc, _ = metric._collect("image", es.n_images)
    assert torch.equal(enc.emb, img.emb) and metric.n_duplicates["images"] == 3


def test_joined_concatenates_parts_that_are_not_consecutive_rows():
    a, b = torch.arange(12.0).view(6, 2), torch.arange(4.0).view(2, 2)
    assert joined([a[:2], a[2:5]]).data_ptr() == a.data_ptr()  # consecutive: a view
    assert torch.equal(joined([a[:2], a[3:5]]), torch.cat([a[:2], a[3:5]]))  # a gap: copied
    assert torch.equal(joined([a[:2], b]), torch.cat([a[:2], b]))
    assert torch.equal(joined([a[:, :1], a[:, 1:]]), torch.cat([a[:, :1], a[:, 1:]]))  # not contiguous


# -- end to end: per-query ranks before and after -------------------------------------------------
@pytest.mark.parametrize("storage", [None, torch.float16])
@pytest.mark.parametrize("ties", [False, True])
def test_per_query_ranks_are_those_of_the_former_path(storage, ties):
    """The metric (buffers, no concatenation) with a two-stage score (blockwise ITC written in
    place, then re-ranked in place) against the former path: states concatenated from their
    batches, blocks concatenated, re-ranking with copies. Identical ranks, Sim and metrics."""
    es = small_eval_set()
    img = embeddings(es.n_images, 1, tokens=3)
    txt = embeddings(es.n_queries, 2, tokens=2)
    if ties:  # coarse values: many tied first-stage scores
        img, txt = (img * 2).round() / 2, (txt * 2).round() / 2

    def pair(q: Encoded):  # an ITM stand-in: a function of the query's own vectors and the item
        return lambda qi, gi: (q.emb[qi].float().flatten(1).sum(1) * 3.7 + gi.float() * 0.1).sin()

    def new_score(q: Encoded, g: Encoded) -> torch.Tensor:
        first = blockwise_over_gallery(max_sim, q, g, "cpu", block=4)
        return rerank_topk(first, 3, pair(q), batch_size=5, in_place=True)

    def old_score(q: Encoded, g: Encoded) -> torch.Tensor:
        return former_rerank(former_blockwise(max_sim, q, g, 4), 3, pair(q))

    metric = RetrievalMetric(es, new_score, directions=("t2i",), chunk_size=4, storage_dtype=storage)
    _feed(metric, Encoded(img), Encoded(txt), np.arange(es.n_images), np.arange(es.n_queries))
    # the former path: every state concatenated from its batches, in the storage dtype
    dtype = storage or torch.float32
    old_q, old_g = Encoded(txt.to(dtype)), Encoded(img.to(dtype))
    spec = {
        "t2i": DirectionSpec(encoded_score_fn(old_score, old_q, old_g), es.relevance["t2i"], metric.source.get("t2i"))
    }
    got = metric.compute()
    want = evaluate_directions(spec, chunk_size=4)["t2i"]
    np.testing.assert_array_equal(metric.per_query["t2i/rank"], want.rank)
    np.testing.assert_array_equal(metric.per_query["t2i/sim"], want.sim)
    assert (want.rank > 0).sum() == got["t2i/n_queries"] > 0
