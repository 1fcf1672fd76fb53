"""The image-image similarities of score refreshing without a gallery x gallery matrix.

The new path (top-k neighbour table for ``knn``, whole rows of shown items on demand for
``mean`` / ``max`` / ``residual``) against the old dense path kept verbatim in
``tests.feedback_dense_reference``: on tiny random galleries, every kernel, both scales,
one refresh step after another and whole protocol runs of every arm (the llm arm with its
fallback to refreshing), the refreshed scores agree to 1e-6 and the rankings are identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.config import ConfigError, from_dict
from benchmark.feedback import arms as arms_module
from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import FeedbackConfig, RefreshConfig
from benchmark.feedback.kernels import KERNELS, NEIGHBOURS, ROWS
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.rules import RulesBackend
from benchmark.feedback.neighbours import NeighbourTable
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.ranking import ranks, top_shown
from benchmark.feedback.refine import Refiner
from benchmark.feedback.rowcache import RowCache
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.user import SimulatedUser
from lightning_modules.base import Encoded
from tests.feedback_dense_reference import DENSE_ARMS, DenseGalleryScorer, refreshed_dense
from tests.feedback_helpers import FakeModel, gallery_of, tiny_split, tiny_task

KERNEL_NAMES = tuple(KERNELS)


def _random_gallery(kind: str, n: int = 60, dim: int = 12, seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    if kind == "single":  # one vector per image (CLIP-like cosine)
        return Encoded(F.normalize(torch.randn(n, dim, generator=g), dim=-1))
    if kind == "multi":  # several vectors per image (BLIP2-like late interaction)
        return Encoded(F.normalize(torch.randn(n, 4, dim, generator=g), dim=-1))
    # "duplicates": every image twice, so image-image scores tie exactly
    half = F.normalize(torch.randn(n // 2, dim, generator=g), dim=-1)
    return Encoded(torch.cat([half, half])[torch.randperm(n, generator=g)])


def _scorers(gallery: Encoded, **options):
    model = FakeModel()
    return (
        GalleryScorer(model, gallery, model.score, batch_size=8, **options),
        DenseGalleryScorer(model, gallery, model.score, batch_size=8),
    )


@pytest.mark.parametrize("kind", ["single", "multi", "duplicates"])
@pytest.mark.parametrize("scale", ["std", "none"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_refresh_steps_equal_the_dense_path(kernel, scale, kind):
    """Five rounds of refreshing 9 queries, each showing 4 items (repeated across queries
    and rounds): the new path's scores equal the dense path's to 1e-6 every round, the
    shown items and ranks are identical, and the same rows are scored."""
    gallery = _random_gallery(kind)
    new, old = _scorers(gallery)
    w = RefreshConfig(w0=1.0, w_ps=0.7, w_ns=0.3, scale=scale, kernel=kernel, neighbours=3)
    g = torch.Generator().manual_seed(1)
    prev_new = prev_old = torch.randn(9, len(gallery), generator=g)
    relevant = torch.rand(9, len(gallery), generator=g) < 0.2
    excluded = torch.zeros_like(relevant)
    for _ in range(5):
        shown = top_shown(prev_new, excluded, 4)
        assert torch.equal(shown, top_shown(prev_old, excluded, 4))
        ps = relevant.gather(1, shown)
        prev_new = refreshed(prev_new, new.shown(shown), ps, w)
        prev_old = refreshed_dense(prev_old, old.image_rows(shown.reshape(-1)).view(*shown.shape, -1), ps, w)
        assert (prev_new - prev_old).abs().max() <= 1e-6
        if kernel == "knn":  # exact 0/1 counts: the very same floats
            assert torch.equal(prev_new, prev_old)
        assert torch.equal(ranks(prev_new, relevant, excluded), ranks(prev_old, relevant, excluded))
        excluded[torch.arange(9)[:, None].expand_as(shown)[~ps], shown[~ps]] = True
    assert new.n_image_rows == old.n_dense_rows  # the same rows scored, each once
    if KERNELS[kernel].reads == NEIGHBOURS:
        assert new.table is not None and new.table.k == 3 and len(new.row_cache) == 0
    else:
        assert new.table is None and len(new.row_cache) == new.n_image_rows


class _Failing:
    def describe(self):
        return {"spec": "failing", "label": "always fails", "is_llm": True}

    def generate(self, messages):
        raise LLMError("timeout", "test")


def _protocol(task, scorer, fb, backend, monkeypatch=None):
    records = []
    res = run_protocol(
        task,
        scorer,
        scorer.encode_texts(task.queries),
        fb,
        SimulatedUser(task.truths),
        Refiner(backend, fb.llm),
        on_query=records.append,
    )
    return res, records


def _multi_vector_tiny(n: int = 40):
    es, records, scenes = tiny_split(n)
    from benchmark.feedback.task import from_eval_set

    views = [gallery_of(scenes, seed=s).emb for s in range(3)]
    return from_eval_set(es, records), Encoded(torch.stack(views, 1))


@pytest.mark.parametrize("gallery_kind, backend", [("single", "rules"), ("multi", "rules"), ("multi", "failing")])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_whole_protocol_equals_the_dense_path(monkeypatch, kernel, gallery_kind, backend):
    """Every arm of a whole run (200 queries in 4 chunks, 3 rounds): identical ranks per round,
    identical transcripts and fallback counts, the same image-image rows scored."""
    task, gallery = tiny_task(40) if gallery_kind == "single" else _multi_vector_tiny(40)
    fb = from_dict(
        FeedbackConfig,
        {"rounds": 3, "display": 3, "chunk_size": 64, "refresh": {"kernel": kernel, "w_ns": 0.5}},
        "feedback",
    )
    sim = fb.image_similarity()
    model = FakeModel()
    new = GalleryScorer(
        model,
        gallery,
        model.score,
        batch_size=fb.chunk_size,
        row_chunk=sim["row_chunk"],
        top_k=sim["top_k"],
        row_cache_mb=fb.similarity.row_cache_mb,
    )
    old = DenseGalleryScorer(model, gallery, model.score, batch_size=fb.chunk_size)
    make = RulesBackend if backend == "rules" else _Failing
    res_new, rec_new = _protocol(task, new, fb, make())
    with monkeypatch.context() as m:
        for name, arm in DENSE_ARMS.items():
            m.setitem(arms_module.ARMS, name, arm)
        res_old, rec_old = _protocol(task, old, fb, make())
    assert set(res_new.ranks) == {"none", "exclude", "refresh", "llm"}
    for arm in res_new.ranks:
        assert np.array_equal(res_new.ranks[arm], res_old.ranks[arm]), arm
    assert rec_new == rec_old and res_new.counts == res_old.counts
    assert new.n_image_rows == old.n_dense_rows > 0
    assert (res_new.ranks["refresh"] != res_new.ranks["exclude"]).any()  # refreshing did something


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_options_do_not_change_the_scores(kernel):
    """Any row chunk, a larger top-k and no row cache at all give the defaults' rankings
    (values to 1e-6); without a cache, rows shown again are scored again."""
    gallery = _random_gallery("multi", n=50, seed=3)
    w = RefreshConfig(kernel=kernel, neighbours=2, scale="std")
    g = torch.Generator().manual_seed(4)
    prev0 = torch.randn(6, 50, generator=g)
    relevant = torch.rand(6, 50, generator=g) < 0.3
    outs = {}
    for name, options in {
        "default": {},
        "chunk1": {"row_chunk": 1},
        "chunk7": {"row_chunk": 7},
        "top_k9": {"top_k": 9},
        "no_cache": {"row_cache_mb": 0.0},
    }.items():
        scorer, _ = _scorers(gallery, **options)
        prev, excluded = prev0, torch.zeros_like(relevant)
        for _ in range(4):
            shown = top_shown(prev, excluded, 3)
            prev = refreshed(prev, scorer.shown(shown), relevant.gather(1, shown), w)
        outs[name] = (prev, scorer.n_image_rows)
    base = outs["default"][0]
    for name, (prev, _) in outs.items():
        assert (prev - base).abs().max() <= 1e-6, name
        order = torch.sort(prev, dim=1, descending=True, stable=True).indices
        assert torch.equal(order, torch.sort(base, dim=1, descending=True, stable=True).indices), name
    if KERNELS[kernel].reads == ROWS:
        assert outs["no_cache"][1] > outs["default"][1]


def test_top_k_table_matches_the_dense_rows_topk():
    gallery = _random_gallery("multi", n=70, seed=5)
    model = FakeModel()
    scorer = GalleryScorer(model, gallery, model.score, row_chunk=16, top_k=6)
    table = scorer.neighbour_table()
    dense = model.score(gallery, gallery).float()
    top = dense.topk(6, dim=-1)
    assert table.indices.shape == (70, 6) and bool(table.have.all()) and scorer.n_image_rows == 70
    assert torch.equal(table.indices, top.indices) and torch.allclose(table.scores, top.values, atol=1e-6)
    assert torch.equal(scorer.neighbours(torch.tensor([3, 3, 0]), 2), top.indices[[3, 3, 0], :2])
    assert scorer.n_image_rows == 70  # nothing scored twice
    with pytest.raises(ValueError, match="keeps 6 neighbours"):
        scorer.neighbours(torch.tensor([1]), 7)
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        NeighbourTable(5, 6)


def test_row_cache_keeps_rows_within_its_budget():
    cache = RowCache(n_gallery=1024, budget_mb=4 * 1024 * 3 / 2**20)  # room for exactly 3 rows
    assert cache.capacity == 3
    rows = torch.arange(5 * 1024, dtype=torch.float32).view(5, 1024)
    cache.put(torch.tensor([4, 2, 0, 1, 3]), rows)
    assert len(cache) == 3 and cache.contains(torch.tensor([4, 2, 0, 1])).tolist() == [True, True, True, False]
    assert torch.equal(cache.get(torch.tensor([0, 4])), rows[[2, 0]])
    assert RowCache(10, 0.0).capacity == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ({"similarity": {"top_k": 0}}, r"feedback.similarity.top_k must be null or an integer in \[1, 4096\], got 0"),
        ({"similarity": {"top_k": 5000}}, "feedback.similarity.top_k must be null or an integer"),
        (
            {"similarity": {"top_k": 2}, "refresh": {"kernel": "knn", "neighbours": 3}},
            r"feedback.similarity.top_k must be >= feedback.refresh.neighbours \(3\)",
        ),
        ({"similarity": {"row_chunk": 0}}, r"feedback.similarity.row_chunk must be null or an integer in \[1, 65536\]"),
        ({"similarity": {"row_cache_mb": -1}}, "feedback.similarity.row_cache_mb must be a number of MB"),
        ({"similarity": {"row_cache_mb": float("nan")}}, "feedback.similarity.row_cache_mb"),
        ({"similarity": {"top_k": 1.5}}, "feedback.similarity.top_k: expected an integer"),
        ({"similarity": {"k": 3}}, "feedback.similarity.k"),
        (
            {"refresh": {"w_ns": float("nan")}},
            "feedback.refresh.w_ns: expected a finite number",
        ),  # from_dict refuses NaN
        ({"refresh": {"w_ns": -1.0}}, "feedback.refresh.w_ns must be a number >= 0"),
    ],
)
def test_similarity_options_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(FeedbackConfig, override, "feedback")


def test_resolved_settings_follow_the_kernel():
    assert FeedbackConfig().image_similarity() == {
        "reads": "rows",
        "top_k": None,
        "row_chunk": 256,
        "row_cache_mb": 1024.0,
    }  # the default kernel: max
    knn = from_dict(FeedbackConfig, {"refresh": {"kernel": "knn"}}, "feedback")
    assert knn.image_similarity() == {"reads": "neighbours", "top_k": 3, "row_chunk": 256, "row_cache_mb": None}
    fb = from_dict(
        FeedbackConfig,
        {"chunk_size": 64, "refresh": {"kernel": "mean"}, "similarity": {"top_k": 2, "row_cache_mb": 8}},
        "feedback",
    )
    assert fb.image_similarity() == {"reads": "rows", "top_k": None, "row_chunk": 64, "row_cache_mb": 8.0}
    fb = from_dict(
        FeedbackConfig,
        {"refresh": {"kernel": "knn", "neighbours": 5}, "similarity": {"top_k": 16, "row_chunk": 100}},
        "feedback",
    )
    assert fb.image_similarity() == {"reads": "neighbours", "top_k": 16, "row_chunk": 100, "row_cache_mb": None}


def test_result_file_records_the_options_and_still_reads_in_the_reports(tmp_path):
    from benchmark.reporting.feedback_runs import feedback_run
    from benchmark.results import load_result
    from tests.reporting_fixtures import write_feedback_result

    r = load_result(write_feedback_result(tmp_path))
    assert r["protocol"]["image_similarity"] == {
        "reads": "rows",
        "top_k": None,
        "row_chunk": 256,
        "row_cache_mb": 1024.0,
    }
    assert r["protocol"]["feedback_config"]["similarity"] == {"top_k": None, "row_chunk": None, "row_cache_mb": 1024.0}
    run = feedback_run(r)
    assert run.refresh == r["protocol"]["feedback_config"]["refresh"]  # the reports show refresh as before


def test_similarity_options_leave_the_config_hash_alone():
    from benchmark.config import build_run_config, stable_hash, to_dict
    from benchmark.feedback.record import result_hash

    cfg = build_run_config({"model": "clip", "dataset": "synthetic", "size": "tiny", "tag": "default", "seed": 0})
    default = FeedbackConfig()
    before = {k: v for k, v in to_dict(default).items() if k != "similarity"}  # a config from before the options
    before["llm"].pop("max_reply_bytes")  # a transport bound, left out of the hash like similarity
    assert result_hash(cfg, default) == stable_hash([cfg.config_hash(), before])
    tuned = from_dict(FeedbackConfig, {"similarity": {"top_k": 8, "row_chunk": 64, "row_cache_mb": 0}}, "feedback")
    assert result_hash(cfg, tuned) == result_hash(cfg, default)
    assert result_hash(cfg, from_dict(FeedbackConfig, {"refresh": {"neighbours": 4}}, "feedback")) != result_hash(
        cfg, default
    )


@pytest.mark.parametrize("tag, user", [("default", "graded"), ("binary", "binary")])
def test_committed_reference_configs_keep_their_hash_and_settings(tag, user):
    """The committed reference feedback runs (the graded user, the default, and the binary one)
    read back into today's config with the same hash, and resolve to the settings that
    reproduce the dense path (top_k = neighbours for knn; row_chunk = chunk_size, every row
    cached for the whole-row kernels at G = 1000)."""
    import json
    from pathlib import Path

    from benchmark.config import RunConfig
    from benchmark.feedback.record import recorded_feedback_config, result_hash

    ref = json.loads(
        (Path(__file__).parents[1] / "results" / "reference" / f"feedback__ours__synthetic__{tag}.json").read_text()
    )
    cfg = from_dict(RunConfig, ref["config"], "config")
    fb = recorded_feedback_config(ref["protocol"]["feedback_config"])
    assert fb.user.model == user and ref["protocol"]["user"]["model"] == user
    assert result_hash(cfg, fb) == ref["config_hash"]
    sim = fb.image_similarity()
    assert sim["row_chunk"] == fb.chunk_size
    if sim["reads"] == NEIGHBOURS:
        assert sim["top_k"] == fb.refresh.neighbours
    else:
        n = ref["protocol"]["n_gallery"]
        assert RowCache(n, sim["row_cache_mb"]).capacity >= n
