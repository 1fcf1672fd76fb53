"""Per-round feedback metrics and ranking with exclusion, on hand-made ranks and scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.feedback import metrics
from benchmark.feedback.ranking import ranks, top_shown
from benchmark.metrics.retrieval import dense_score_fn, evaluate_direction
from datamodules.base import Relevance

# rounds x queries, 1-based ranks (T = 2, three queries)
RANKS = np.array([[3, 1, 10], [2, 4, 10], [5, 1, 1]])


def test_per_round_table_by_hand():
    t = metrics.per_round(RANKS, ks=(1, 5))
    assert t["round"] == [0, 1, 2]
    # best so far: q0 3,2,2  q1 1,1,1  q2 10,10,1
    assert t["Hits@1"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert t["Hits@5"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert t["R@1"] == pytest.approx([1 / 3, 0.0, 2 / 3])
    assert t["R@5"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert t["MRR"][0] == pytest.approx((1 / 3 + 1 + 1 / 10) / 3)
    assert t["median_rank"] == [3.0, 4.0, 1.0]
    assert t["mean_rank"][1] == pytest.approx(16 / 3)


def test_bri_by_hand():
    # T = 2: per query (1/4)(log p0 + log p2) + (1/2) log p1
    q0 = (math.log(3) + math.log(2)) / 4 + math.log(2) / 2
    q2 = (math.log(10) + 0.0) / 4 + math.log(10) / 2
    assert metrics.bri(RANKS) == pytest.approx((q0 + 0.0 + q2) / 3)
    series = metrics.bri_series(RANKS)
    assert series[0] == pytest.approx((math.log(3) + math.log(10)) / 3)  # mean log p0
    assert series[1] == pytest.approx(((math.log(3) + math.log(2)) / 2 + math.log(10)) / 3)  # T = 1
    assert series[2] == pytest.approx(metrics.bri(RANKS))
    # one query, T = 3, best-so-far 4, 4, 2, 1: (1/6)(log 4 + log 1) + (1/3)(log 4 + log 2)
    assert metrics.bri(np.array([[4], [6], [2], [1]])) == pytest.approx(math.log(4) / 6 + math.log(8) / 3)
    with pytest.raises(ValueError, match="T >= 1"):
        metrics.bri(RANKS[:1])


def test_rounds_to_success_and_summary():
    assert metrics.rounds_to_success(RANKS, 5).tolist() == [0, 0, 2]
    assert metrics.rounds_to_success(RANKS, 1).tolist() == [-1, 0, 2]
    s = metrics.summary(RANKS, 1)
    assert s["rounds_to_success_mean"] == pytest.approx(1.0) and s["rounds_to_success_median"] == pytest.approx(1.0)
    assert s["never_found"] == pytest.approx(1 / 3) and (s["n_queries"], s["n_skipped"]) == (3, 0)


def test_queries_without_relevant_items_are_left_out_and_counted():
    with_skip = np.column_stack([RANKS, np.zeros(3, dtype=np.int64)])
    assert metrics.per_round(with_skip, ks=(5,)) == metrics.per_round(RANKS, ks=(5,))
    assert metrics.summary(with_skip, 5)["n_skipped"] == 1
    with pytest.raises(ValueError, match="some rounds only"):
        metrics.per_round(np.array([[1, 0], [1, 2]]))


def test_ranks_with_ties_nan_and_exclusion_by_hand():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, float("nan")], [0.2, 0.2, 0.2, 0.2, 0.2]])
    relevant = torch.tensor([[False, False, True, False, False], [False, False, False, False, False]])
    excluded = torch.zeros_like(relevant)
    assert ranks(scores, relevant, excluded).tolist() == [3, 0]  # the tie at 0.5 counts against the model
    excluded[0, 1] = True
    assert ranks(scores, relevant, excluded).tolist() == [2, 0]
    relevant[0] = torch.tensor([False, False, False, False, True])  # a NaN relevant item ranks last
    assert ranks(scores, relevant).tolist()[0] == 5


def test_ranks_equal_the_suites_evaluation_without_exclusion():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (30, 12), generator=g).float()  # many ties
    rows = [sorted(set(torch.randint(0, 12, (1 + i % 3,), generator=g).tolist())) for i in range(30)]
    rel = Relevance.from_lists(rows, 12)
    expected = evaluate_direction(dense_score_fn(scores), rel, n_queries=30).rank
    assert ranks(scores, torch.from_numpy(rel.dense())).tolist() == expected.tolist()


def test_top_shown_skips_excluded_and_breaks_ties_by_index():
    scores = torch.tensor([[0.3, 0.9, 0.3, 0.8, float("-inf")]])
    excluded = torch.tensor([[False, True, False, False, False]])
    assert top_shown(scores, excluded, 3).tolist() == [[3, 0, 2]]
    assert top_shown(scores, excluded, 4).tolist() == [[3, 0, 2, 4]]  # -inf but not excluded
