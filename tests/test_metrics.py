"""The retrieval metrics against a plain numpy reference, torchmetrics, and their own contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR

from benchmark.metrics import (
    DirectionSpec,
    RetrievalMetric,
    dense_score_fn,
    encoded_score_fn,
    evaluate_direction,
    higher_is_better,
    retrieval_metrics,
    source_relevance,
    summarize,
    transpose_relevance,
)
from datamodules.base import CaptionRecord, ImageRecord, InstructionTemplates, Relevance, build_eval_set
from lightning_modules.base import Encoded, max_sim

KS = (1, 5, 10)


# -- brute-force reference (plain loops, a different algorithm: an explicit ranking) -----------


def reference_ranks(scores: np.ndarray, rows: list[list[int]], exclude_self: bool = False) -> np.ndarray:
    """Sort the gallery by score, relevant items last among ties; rank = first relevant position."""
    ranks = np.zeros(len(scores), dtype=np.int64)
    for q in range(len(scores)):
        positives = {int(g) for g in rows[q]} - ({q} if exclude_self else set())
        if not positives:
            continue
        entries = []
        for g in range(scores.shape[1]):
            if exclude_self and g == q:
                continue
            s = -math.inf if math.isnan(scores[q, g]) else float(scores[q, g])
            entries.append((-s, g in positives, g))
        entries.sort()  # descending score; non-relevant (False) before relevant (True) on ties
        for position, (_, relevant, _) in enumerate(entries, start=1):
            if relevant:
                ranks[q] = position
                break
    return ranks


def reference_sims(scores: np.ndarray, sources: list[list[int]]) -> np.ndarray:
    out = np.full(len(scores), np.nan)
    for q, items in enumerate(sources):
        if items:
            out[q] = sum(float(scores[q, g]) for g in items) / len(items)
    return out


def reference_summary(ranks: np.ndarray, sims: np.ndarray | None, ks=KS) -> dict[str, float]:
    evaluated = [int(r) for r in ranks if r > 0]
    n = len(evaluated)
    out = {}
    for k in ks:
        out[f"R@{k}"] = sum(1 for r in evaluated if r <= k) / n
    out["MRR"] = sum(1.0 / r for r in evaluated) / n
    out["mean_rank"] = sum(evaluated) / n
    ordered = sorted(evaluated)
    out["median_rank"] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    if sims is not None:
        with_source = [s for s in sims if not math.isnan(s)]
        out["Sim"] = sum(with_source) / len(with_source)
    out["n_queries"] = n
    out["n_skipped"] = len(ranks) - n
    return out


def random_case(seed: int, n_q: int = 53, n_g: int = 29, decimals: int = 1):
    """Scores in [-1, 1] rounded (many ties), 0-4 positives per query (some none), sources."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(-1, 1, size=(n_q, n_g)), decimals).astype(np.float32)
    rows = [sorted(rng.choice(n_g, size=rng.integers(0, 5), replace=False).tolist()) for _ in range(n_q)]
    sources = [[int(rng.integers(n_g))] if rng.random() < 0.8 else [] for _ in range(n_q)]
    return scores, rows, sources


def assert_summary_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k


# -- the functional core -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("rank_block", [3, 16384])  # ranks counted over gallery blocks, or in one
def test_matches_bruteforce_with_ties_negatives_multi_positive(seed, chunk_size, rank_block, monkeypatch):
    import benchmark.metrics.retrieval as retrieval

    monkeypatch.setattr(retrieval, "RANK_BLOCK", rank_block)
    scores, rows, sources = random_case(seed)
    rel = Relevance.from_lists(rows, scores.shape[1])
    src = Relevance.from_lists(sources, scores.shape[1])
    r = evaluate_direction(
        dense_score_fn(torch.from_numpy(scores)), rel, n_queries=len(scores), source=src, chunk_size=chunk_size
    )
    want_ranks = reference_ranks(scores, rows)
    np.testing.assert_array_equal(r.rank, want_ranks)
    want_sims = reference_sims(scores, sources)
    np.testing.assert_allclose(r.sim, want_sims, rtol=1e-6, equal_nan=True)
    assert (want_ranks == 0).any() and (want_ranks > 0).any()
    assert_summary_close(summarize(r, KS), reference_summary(want_ranks, r.sim))


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("rank_block", [4, 16384])
def test_exclude_self_matches_bruteforce(chunk_size, rank_block, monkeypatch):
    import benchmark.metrics.retrieval as retrieval

    monkeypatch.setattr(retrieval, "RANK_BLOCK", rank_block)
    scores, rows, _ = random_case(3, n_q=31, n_g=31)
    rows[0] = [0]  # only itself: skipped once self is excluded
    rows[1] = sorted(set(rows[1]) | {1, 4})  # self listed as relevant: dropped, 4 still counts
    scores[2, 2] = 5.0  # self scoring best must not push other queries' items down
    rel = Relevance.from_lists(rows, 31)
    r = evaluate_direction(
        dense_score_fn(torch.from_numpy(scores)), rel, n_queries=31, exclude_self=True, chunk_size=chunk_size
    )
    np.testing.assert_array_equal(r.rank, reference_ranks(scores, rows, exclude_self=True))
    assert r.rank[0] == 0 and r.sim is None
    assert "Sim" not in summarize(r)


def test_constant_scorer_gets_the_worst_rank():
    n_q, n_g = 12, 10
    rows = [[q % n_g] for q in range(n_q)]
    rows[3] = [1, 2, 3]
    rel = Relevance.from_lists(rows, n_g)
    r = evaluate_direction(lambda a, b: torch.zeros(b - a, n_g), rel, n_queries=n_q)
    np.testing.assert_array_equal(r.rank, [n_g - len(x) + 1 for x in rows])
    s = summarize(r)
    assert s["R@1"] == 0.0 and s["R@5"] == 0.0 and s["MRR"] < 0.15


def test_nan_scores_rank_last():
    scores = torch.tensor([[float("nan"), 0.1, -0.3], [0.2, float("nan"), float("nan")], [float("nan")] * 3])
    rows = [[0], [0], [1]]
    r = evaluate_direction(dense_score_fn(scores), Relevance.from_lists(rows, 3), n_queries=3)
    np.testing.assert_array_equal(r.rank, reference_ranks(scores.numpy(), rows))
    np.testing.assert_array_equal(r.rank, [3, 1, 3])


def test_duplicate_relevance_entries_do_not_change_ranks():
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    rel = Relevance(np.array([0, 2]), np.array([0, 0]), 3)
    r = evaluate_direction(dense_score_fn(scores), rel, n_queries=1)
    assert r.rank.tolist() == [2]


def test_multi_vector_scoring_via_max_sim():
    rng = np.random.default_rng(7)
    q_emb = torch.from_numpy(rng.normal(size=(19, 4, 8)).round(1).astype(np.float32))
    g_emb = torch.from_numpy(rng.normal(size=(13, 3, 8)).round(1).astype(np.float32))
    q_len = torch.from_numpy(rng.integers(1, 5, size=19))
    queries, gallery = Encoded(q_emb, q_len), Encoded(g_emb)
    dense = np.full((19, 13), -np.inf)
    for q in range(19):
        for g in range(13):
            for t in range(int(q_len[q])):
                for s in range(3):
                    dense[q, g] = max(dense[q, g], float(q_emb[q, t] @ g_emb[g, s]))
    rows = [sorted(rng.choice(13, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(19)]
    rel = Relevance.from_lists(rows, 13)
    for chunk in (1, 4, 100):
        r = evaluate_direction(encoded_score_fn(max_sim, queries, gallery), rel, n_queries=19, chunk_size=chunk)
        np.testing.assert_array_equal(r.rank, reference_ranks(dense.astype(np.float32), rows))


@pytest.mark.parametrize("q_multi,g_multi", [(True, True), (True, False), (False, True)])
def test_max_sim_matches_bruteforce_with_lengths_on_both_sides(q_multi, g_multi):
    gen = torch.Generator().manual_seed(3)
    q_emb = torch.randn((9, 5, 6) if q_multi else (9, 6), generator=gen)
    g_emb = torch.randn((7, 4, 6) if g_multi else (7, 6), generator=gen)
    q_len = torch.randint(1, 6, (9,), generator=gen) if q_multi else None
    g_len = torch.randint(1, 5, (7,), generator=gen) if g_multi else None
    q3, g3 = (q_emb if q_multi else q_emb[:, None]), (g_emb if g_multi else g_emb[:, None])
    expected = torch.full((9, 7), -torch.inf)
    for a in range(9):
        for b in range(7):
            for t in range(int(q_len[a]) if q_multi else 1):
                for s in range(int(g_len[b]) if g_multi else 1):
                    expected[a, b] = max(expected[a, b], float(q3[a, t] @ g3[b, s]))
    got = max_sim(Encoded(q_emb, q_len), Encoded(g_emb, g_len))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_torchmetrics_on_positive_scores_without_ties(seed):
    rng = np.random.default_rng(seed)
    n_q, n_g = 40, 25
    scores = torch.from_numpy(rng.permutation(n_q * n_g).reshape(n_q, n_g).astype(np.float32) + 1.0)
    rows = [sorted(rng.choice(n_g, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n_q)]
    rel = Relevance.from_lists(rows, n_g)
    ours = summarize(evaluate_direction(dense_score_fn(scores), rel, n_queries=n_q, chunk_size=9), KS)
    target = torch.from_numpy(rel.dense())
    indexes = torch.arange(n_q)[:, None].expand(n_q, n_g)
    mrr = RetrievalMRR()(scores.flatten(), target.flatten(), indexes=indexes.flatten())
    assert ours["MRR"] == pytest.approx(float(mrr), abs=1e-6)
    for k in KS:
        hit = RetrievalHitRate(top_k=k)(scores.flatten(), target.flatten(), indexes=indexes.flatten())
        assert ours[f"R@{k}"] == pytest.approx(float(hit), abs=1e-6)


@settings(max_examples=120, deadline=None)
@given(
    n_q=st.integers(1, 9),
    n_g=st.integers(1, 9),
    levels=st.integers(1, 4),
    chunk=st.integers(1, 10),
    exclude_self=st.booleans(),
    special=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_bruteforce(n_q, n_g, levels, chunk, exclude_self, special, seed):
    """Integer scores (many ties), optionally with NaN and +-inf sprinkled in."""
    if exclude_self:
        n_g = n_q
    rng = np.random.default_rng(seed)
    scores = rng.integers(-levels, levels + 1, size=(n_q, n_g)).astype(np.float32)
    if special:
        mask = rng.random(scores.shape) < 0.3
        scores[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), size=int(mask.sum()))
    rows = [np.flatnonzero(rng.random(n_g) < 0.3).tolist() for _ in range(n_q)]
    rel = Relevance.from_lists(rows, n_g)
    r = evaluate_direction(
        dense_score_fn(torch.from_numpy(scores)), rel, n_queries=n_q, exclude_self=exclude_self, chunk_size=chunk
    )
    want = reference_ranks(scores, rows, exclude_self)
    np.testing.assert_array_equal(r.rank, want)
    evaluated = want[want > 0]
    assert ((evaluated >= 1) & (evaluated <= n_g)).all()


def test_retrieval_metrics_flat_keys_carry_the_direction():
    scores, rows, sources = random_case(5)
    s = torch.from_numpy(scores)
    rel = Relevance.from_lists(rows, scores.shape[1])
    specs = {
        "t2i": DirectionSpec(dense_score_fn(s), rel, Relevance.from_lists(sources, scores.shape[1])),
        "i2t": DirectionSpec(dense_score_fn(s.T.contiguous()), transpose_relevance(rel)),
    }
    out = retrieval_metrics(specs, ks=(1, 3))
    assert {k.split("/")[0] for k in out} == {"t2i", "i2t"}
    assert "t2i/Sim" in out and "i2t/Sim" not in out and "t2i/R@3" in out
    assert all(isinstance(v, (int, float)) for v in out.values())
    assert higher_is_better("t2i/R@1") and not higher_is_better("i2t/median_rank")
    assert higher_is_better("t2i/n_queries") is None


def test_relevance_helpers_match_the_datamodule_ones():
    _, rows, _ = random_case(4)
    rel = Relevance.from_lists(rows + [[]], 29)  # an empty query row too
    by_loop: list[list[int]] = [[] for _ in range(29)]  # the definition: gallery item -> its queries, ascending
    for q, row in enumerate(rel.indices[a:b] for a, b in zip(rel.indptr[:-1], rel.indptr[1:], strict=True)):
        for g in row:
            by_loop[int(g)].append(q)
    for t in (transpose_relevance(rel), rel.transpose()):
        assert [t.row(g).tolist() for g in range(29)] == by_loop and t.n_gallery == rel.n_queries
    back = rel.transpose().transpose()
    np.testing.assert_array_equal(back.indptr, rel.indptr)
    np.testing.assert_array_equal(back.indices, rel.indices)
    src = source_relevance(np.array([2, -1, 0]), 3)
    assert [src.row(i).tolist() for i in range(3)] == [[2], [], [0]]


def test_shape_and_argument_errors():
    rel = Relevance.from_lists([[0], [1]], 3)
    with pytest.raises(ValueError, match="returned shape"):
        evaluate_direction(lambda a, b: torch.zeros(b - a, 4), rel, n_queries=2)
    with pytest.raises(ValueError, match="n_queries"):
        evaluate_direction(lambda a, b: torch.zeros(b - a, 3), rel, n_queries=3)
    with pytest.raises(ValueError, match="exclude_self"):
        evaluate_direction(lambda a, b: torch.zeros(b - a, 3), rel, n_queries=2, exclude_self=True)


def test_all_queries_skipped_gives_nan_metrics_and_counts():
    rel = Relevance.from_lists([[], []], 3)
    s = summarize(evaluate_direction(lambda a, b: torch.ones(b - a, 3), rel, n_queries=2))
    assert math.isnan(s["R@1"]) and math.isnan(s["MRR"]) and s["n_queries"] == 0 and s["n_skipped"] == 2


# -- the torchmetrics Metric -------------------------------------------------------------------


def small_eval_set(n_images: int = 11, captions_per_image: int = 3):
    """A real EvalSet: every image has captions; some captions match several images, some i2i."""
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(n_images)]
    records = []
    for i in range(n_images):
        caps = tuple(CaptionRecord(f"caption {i}.{c}") for c in range(captions_per_image))
        relevant = tuple(
            tuple(sorted({ids[i]} | {ids[j] for j in rng.choice(n_images, size=c, replace=False)}))
            for c in range(captions_per_image)
        )
        i2i = tuple(ids[j] for j in rng.choice(n_images, size=2, replace=False)) if i % 2 else ()
        records.append(ImageRecord(ids[i], Path(f"{i}.png"), caps, relevant_images=relevant, i2i_relevant=i2i))
    return build_eval_set("test", records, InstructionTemplates(), "sha")


def embeddings(n: int, seed: int, tokens: int | None = None, dim: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, dim) if tokens is None else (n, tokens, dim)
    return torch.round(torch.randn(shape, generator=g), decimals=1)


def reference_metrics(es, img: Encoded, txt: Encoded, ks=KS) -> dict[str, float]:
    """The Metric's numbers computed directly by the functional core on full matrices."""
    t2i_src = source_relevance(es.source, es.n_images)
    specs = {
        "t2i": DirectionSpec(dense_score_fn(max_sim(txt, img)), es.relevance["t2i"], t2i_src),
        "i2t": DirectionSpec(dense_score_fn(max_sim(img, txt)), es.relevance["i2t"], transpose_relevance(t2i_src)),
        "i2i": DirectionSpec(dense_score_fn(max_sim(img, img)), es.relevance["i2i"], exclude_self=True),
    }
    return retrieval_metrics(specs, ks=ks)


def test_metric_deduplicates_and_sorts_by_index():
    es = small_eval_set()
    img = Encoded(embeddings(es.n_images, 1, tokens=3), torch.full((es.n_images,), 2))
    txt = Encoded(embeddings(es.n_queries, 2), torch.arange(es.n_queries) % 4 + 1)
    metric = RetrievalMetric(es, max_sim, chunk_size=4)
    rng = np.random.default_rng(1)
    img_order = np.concatenate([rng.permutation(es.n_images), [0, 5, 5]])  # padded repeats
    txt_order = np.concatenate([rng.permutation(es.n_queries), [3, es.n_queries - 1]])
    for part in np.array_split(img_order, 3):
        idx = torch.from_numpy(part)
        metric.update_images(idx, img[idx])
    for part in np.array_split(txt_order, 4):
        idx = torch.from_numpy(part)
        metric.update_texts(idx, txt[idx])
    got = metric.compute()
    want = reference_metrics(es, img, txt)
    # the index: the gallery's embeddings as stored (float32 here), once per image despite the duplicates
    assert (
        got.pop("index/bytes") == es.n_images * img.emb[0].numel() * 4 == es.n_images * got.pop("index/bytes_per_image")
    )
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], nan_ok=True), k
    assert got["t2i/n_queries"] == es.n_queries and got["i2t/n_queries"] == es.n_images
    assert metric.n_duplicates == {"images": 3, "texts": 2}
    pq = metric.per_query
    assert pq["t2i/rank"].shape == (es.n_queries,) and pq["i2t/rank"].shape == (es.n_images,)
    assert "i2i/sim" not in pq and pq["t2i/sim"].shape == (es.n_queries,)
    np.testing.assert_array_equal(pq["text_lengths"], txt.lengths.numpy())
    np.testing.assert_array_equal(pq["image_lengths"], np.full(es.n_images, 2))


def test_metric_sim_uses_own_image_and_own_captions():
    es = small_eval_set()
    img, txt = Encoded(embeddings(es.n_images, 3)), Encoded(embeddings(es.n_queries, 4))
    metric = RetrievalMetric(es, max_sim, directions=("t2i", "i2t"))
    metric.update_images(torch.arange(es.n_images), img)
    metric.update_texts(torch.arange(es.n_queries), txt)
    out = metric.compute()
    s = (txt.emb @ img.emb.T).double().numpy()
    assert out["t2i/Sim"] == pytest.approx(np.mean([s[q, es.source[q]] for q in range(es.n_queries)]))
    per_image = [np.mean([s[q, i] for q in range(es.n_queries) if es.source[q] == i]) for i in range(es.n_images)]
    assert out["i2t/Sim"] == pytest.approx(np.mean(per_image))
    assert not any(k.startswith("i2i") for k in out)
    np.testing.assert_array_equal(metric.per_query["text_lengths"], -1)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metric_reports_missing_and_out_of_range_indices():
    es = small_eval_set()
    img, txt = Encoded(embeddings(es.n_images, 3)), Encoded(embeddings(es.n_queries, 4))
    metric = RetrievalMetric(es, max_sim)
    metric.update_images(torch.arange(es.n_images - 2), img[: es.n_images - 2])
    metric.update_texts(torch.arange(es.n_queries), txt)
    with pytest.raises(ValueError, match=r"2 of 11 images were never encoded \(e.g. indices \[9, 10\]\)"):
        metric.compute()
    metric.reset()
    metric.update_images(torch.arange(es.n_images) + 1, img)
    metric.update_texts(torch.arange(es.n_queries), txt)
    with pytest.raises(ValueError, match="must lie in"):
        metric.compute()
    metric.reset()
    with pytest.raises(RuntimeError, match="no images"):
        metric.compute()


def test_metric_rejects_bad_inputs():
    es = small_eval_set()
    with pytest.raises(ValueError, match="directions"):
        RetrievalMetric(es, max_sim, directions=("x2y",))
    metric = RetrievalMetric(es, max_sim)
    metric.update_images(torch.arange(3), Encoded(embeddings(3, 0, tokens=2)))
    with pytest.raises(ValueError, match="changed shape"):
        metric.update_images(torch.arange(3, 6), Encoded(embeddings(3, 0, tokens=4)))
    with pytest.raises(ValueError, match="indices for"):
        metric.update_texts(torch.arange(2), Encoded(embeddings(3, 0)))
