"""The feedback round loop on a fake model over hand-made embeddings (fast, deterministic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.config import ConfigError, from_dict
from benchmark.feedback import metrics
from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import FeedbackConfig, LLMConfig, RefreshConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.rules import RulesBackend
from benchmark.feedback.prompts import read_input
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.refine import Refiner
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.transcript import JsonlWriter
from benchmark.feedback.user import SimulatedUser
from benchmark.metrics.retrieval import dense_score_fn, evaluate_direction
from lightning_modules.base import RetrievalModel
from tests.feedback_helpers import FakeModel, tiny_task


def _run(task, gallery, backend=None, **overrides):
    fb = from_dict(FeedbackConfig, {"rounds": 3, "display": 3, "chunk_size": 32, **overrides}, "feedback")
    model = FakeModel()
    scorer = GalleryScorer(model, gallery, model.score, batch_size=16)
    queries = scorer.encode_texts(task.queries)
    backend = backend or RulesBackend()
    records = []
    res = run_protocol(
        task, scorer, queries, fb, SimulatedUser(task.truths), Refiner(backend, fb.llm), on_query=records.append
    )
    return res, records, scorer


@pytest.fixture(scope="module")
def tiny():
    return tiny_task(40)


@pytest.fixture(scope="module")
def rules_run(tiny):
    return _run(*tiny)


def test_round_zero_is_the_models_ranking_in_every_arm(tiny, rules_run):
    task, _gallery = tiny
    res, _, scorer = rules_run
    assert isinstance(scorer.model, RetrievalModel)  # the fake honours the suite's protocol
    scores = scorer.scores(scorer.encode_texts(task.queries))
    expected = evaluate_direction(dense_score_fn(scores), task.relevance, n_queries=task.n_queries).rank
    for arm, r in res.ranks.items():
        assert r.shape == (4, task.n_queries)
        assert r[0].tolist() == expected.tolist(), arm
    assert (res.ranks["none"] == res.ranks["none"][0]).all()  # no feedback: the same ranking every round


def test_exclusion_only_removes_competitors(rules_run):
    res, _, _ = rules_run
    ex = res.ranks["exclude"]
    assert (np.diff(ex, axis=0) <= 0).all()  # dropping non-relevant items never worsens a rank
    assert (ex[-1] < res.ranks["none"][-1]).any()


def test_rules_refinement_beats_no_feedback_and_logs_a_transcript(tiny, rules_run):
    task, _ = tiny
    res, records, _ = rules_run
    bri = {a: metrics.bri(r) for a, r in res.ranks.items()}
    hits = {a: metrics.per_round(r, (1,))["Hits@1"][-1] for a, r in res.ranks.items()}
    assert bri["llm"] < bri["none"] and hits["llm"] > hits["none"]
    assert res.counts["llm_rounds"] == 3 * task.n_queries
    assert len(records) == task.n_queries and [r["query_index"] for r in records] == list(range(task.n_queries))
    rec = records[0]
    assert rec["target_image_id"] == task.image_ids[task.targets[0]] and rec["arms"]["none"]["rounds"] == []
    llm_rounds = rec["arms"]["llm"]["rounds"]
    assert [r["round"] for r in llm_rounds] == [1, 2, 3]
    first = llm_rounds[0]
    assert len(first["shown"]) == 3 and sorted(first["ps"] + first["ns"]) == sorted(first["shown"])
    relevant = {task.image_ids[g] for g in task.relevance.row(0)}
    assert set(first["ps"]) == set(first["shown"]) & relevant
    if first["fallback"] is None:
        assert 2 <= len(first["questions"]) <= 3 and first["refined_query"]
        assert all(q["answer"] in q["options"] and q["options"][-1] == "none / unsure" for q in first["questions"])
    json.dumps(records)  # the transcript is plain JSON


def test_refreshed_by_hand():
    prev = torch.tensor([[1.0, 2.0, 3.0]])
    sims = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # shown items 0, 1, 2
    ps = torch.tensor([[True, False, False]])
    w = RefreshConfig(w0=1.0, w_ps=0.5, w_ns=0.25, scale="none", kernel="mean")
    # PS mean = [1, 0, 0]; NS mean = [0, .5, .5]
    assert refreshed(prev, sims, ps, w).tolist() == [[1.5, 1.875, 2.875]]
    none_ps = refreshed(prev, sims, torch.tensor([[False, False, False]]), w)
    assert torch.allclose(none_ps, prev - 0.25 * torch.tensor([[1 / 3, 1 / 3, 1 / 3]]))
    # scale "std": the similarity rows are rescaled to the spread of prev (std 0.8165)
    scaled = refreshed(prev, sims, ps, RefreshConfig(w0=0.0, w_ps=1.0, w_ns=0.0, scale="std", kernel="mean"))
    assert torch.allclose(scaled.std(1, unbiased=False), prev.std(1, unbiased=False))


def test_refresh_kernels_by_hand():
    prev = torch.zeros(1, 4)
    # shown items 0 and 1 (rows: their similarity to the 4 gallery items); item 0 is NS, item 1 PS
    sims = torch.tensor([[[1.0, 0.2, 0.9, 0.1], [0.2, 1.0, 0.0, 0.1]]])
    ps = torch.tensor([[False, True]])
    raw = {"scale": "none", "w0": 1.0, "w_ps": 0.0, "w_ns": 1.0}
    # max over a one-item set = that item's row; knn with m = 2: the NS's two nearest (itself and item 2)
    assert torch.allclose(refreshed(prev, sims, ps, RefreshConfig(kernel="max", **raw)), -sims[:, 0])
    assert refreshed(prev, sims, ps, RefreshConfig(kernel="knn", neighbours=2, **raw)).tolist() == [[-1, 0, -1, 0]]
    both_ns = torch.tensor([[False, False]])
    assert torch.allclose(
        refreshed(prev, sims, both_ns, RefreshConfig(kernel="max", **raw)), -torch.tensor([[1.0, 1.0, 0.9, 0.1]])
    )
    # knn share over two NS: item 0 is near both, item 1 only NS 1, item 2 only NS 0, item 3 neither
    assert refreshed(prev, sims, both_ns, RefreshConfig(kernel="knn", neighbours=2, **raw)).tolist() == [
        [-1.0, -0.5, -0.5, 0.0]
    ]
    # an empty set contributes nothing, whatever the kernel
    for kernel in ("mean", "max", "knn"):
        all_ps = refreshed(prev, sims, torch.tensor([[True, True]]), RefreshConfig(kernel=kernel, **raw))
        assert all_ps.tolist() == [[0.0, 0.0, 0.0, 0.0]], kernel
    # scale "std": a knn share is multiplied by the spread of the current scores (w_ns in std units)
    prev2 = torch.tensor([[0.0, 2.0, 0.0, 2.0]])  # std 1
    out = refreshed(prev2, sims, ps, RefreshConfig(kernel="knn", neighbours=2, w_ps=0.0, w_ns=0.5, scale="std"))
    assert out.tolist() == [[-0.5, 2.0, -0.5, 2.0]]


def test_residual_kernel_penalises_only_what_the_query_scores_do_not_explain():
    prev = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    raw = RefreshConfig(kernel="residual", w0=1.0, w_ps=0.0, w_ns=1.0, scale="none")
    ns = torch.tensor([[False]])
    # an NS row that is an affine function of the query's scores is fully explained: no change
    assert torch.allclose(refreshed(prev, (2 * prev + 1)[:, None, :], ns, raw), prev, atol=1e-6)
    # an NS row orthogonal to them is kept whole (standardised): items like the NS go down
    other = torch.tensor([[[1.0, -1.0, -1.0, 1.0]]])
    assert torch.allclose(refreshed(prev, other, ns, raw), prev - other[0], atol=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"kernel": "gauss"}, "feedback.refresh.kernel must be one of mean, max, knn, residual"),
        ({"neighbours": 0}, "feedback.refresh.neighbours must be >= 1"),
    ],
)
def test_refresh_kernel_options_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(FeedbackConfig, {"refresh": override}, "feedback")


class _Failing:
    def __init__(self, reason: str) -> None:
        self.reason, self.calls = reason, 0

    def describe(self):
        return {"spec": "failing", "label": "always fails", "is_llm": True}

    def generate(self, messages):
        self.calls += 1
        raise LLMError(self.reason, "test")


def test_backend_failures_fall_back_to_score_refreshing_with_the_reason_counted(tiny):
    task, gallery = tiny
    res, records, _ = _run(task, gallery, backend=_Failing("timeout"))
    assert res.fallbacks() == {"timeout": 3 * task.n_queries}
    # a failed llm round is exactly a refresh round: the arms coincide
    assert res.ranks["llm"].tolist() == res.ranks["refresh"].tolist()
    assert all(
        r["fallback"] == "timeout" and r["refined_query"] is None
        for rec in records
        for r in rec["arms"]["llm"]["rounds"]
    )


class _Recording(RulesBackend):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict] = []

    def generate(self, messages):
        self.inputs.append(read_input(messages))
        return super().generate(messages)


def test_question_writer_sees_only_query_and_shown_captions(tiny):
    task, gallery = tiny
    backend = _Recording()
    _, records, _ = _run(task, gallery, backend=backend, max_queries=None, rounds=1)
    asks = [i for i in backend.inputs if i["task"] == "questions"]
    assert len(asks) == task.n_queries
    caption_of = dict(zip(task.image_ids, task.gallery_captions, strict=True))
    for ask, rec in zip(asks, records, strict=True):
        assert set(ask) == {"task", "query", "positive_captions", "negative_captions", "history"}
        shown = rec["arms"]["llm"]["rounds"][0]
        assert ask["query"] == rec["query"]
        assert ask["positive_captions"] == [caption_of[i] for i in shown["ps"]]
        assert ask["negative_captions"] == [caption_of[i] for i in shown["ns"]]
        assert rec["target_image_id"] not in json.dumps(ask)


def test_max_queries_and_config_errors(tiny):
    task, gallery = tiny
    res, records, _ = _run(task.limited(7), gallery, arms=["none", "exclude"])
    assert set(res.ranks) == {"none", "exclude"} and res.ranks["none"].shape == (4, 7) and len(records) == 7
    with pytest.raises(ConfigError, match="at least 60"):
        _run(task, gallery, rounds=11, display=5)
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        FeedbackConfig(arms=("none", "nope"))
    with pytest.raises(ConfigError, match="feedback.refresh.w_nss"):
        from_dict(FeedbackConfig, {"refresh": {"w_nss": 1}}, "feedback")
    with pytest.raises(ConfigError, match="--llm"):
        LLMConfig(backend="gpt:foo")
    with pytest.raises(ConfigError, match="openai:<base url>"):
        LLMConfig(backend="openai:localhost")
    with pytest.raises(ConfigError, match="alpha"):
        LLMConfig(alpha=1.5)


def test_transcript_is_written_atomically(tmp_path):
    path = tmp_path / "t.jsonl"
    with JsonlWriter(path) as w:
        w.write({"a": 1})
        w.write({"b": [1, 2]})
        assert not path.exists()  # only a temporary file until the end
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"b": [1, 2]}]
    with pytest.raises(RuntimeError), JsonlWriter(path) as w:
        w.write({"c": 3})
        raise RuntimeError("interrupted")
    assert path.read_text().count("\n") == 2  # the good file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file left
