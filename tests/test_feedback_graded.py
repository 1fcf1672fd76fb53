"""The graded simulated user: closeness, bands, noise, what it reads, refreshing with PS / NS / unsure."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import ConfigError, from_dict
from benchmark.feedback.arms import ARMS, Chunk, refreshed
from benchmark.feedback.closeness import CaptionOverlap, SceneCloseness, constraint_share
from benchmark.feedback.config import FeedbackConfig, RefreshConfig, UserConfig
from benchmark.feedback.marks import BinaryUser, GradedUser, uniform
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.ranking import top_shown
from benchmark.feedback.record import build_result, recorded_feedback_config, result_hash
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.user import SimulatedUser
from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.scene import Scene
from tests.feedback_helpers import FakeModel, tiny_task


def _obj(shape, colour, size, row, column):
    rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
    return {
        "shape": shape,
        "colour": colour,
        "size": size,
        "row": row,
        "column": column,
        "x": (cols.index(column) + 0.5) / 3,
        "y": (rows.index(row) + 0.5) / 3,
    }


def _scene(*objects, pattern="striped", colour="gray"):
    return Scene.from_json({"objects": list(objects), "background": {"pattern": pattern, "colour": colour}})


# "a large red circle to the left of a small blue square, on a striped background": 8 atoms
CAPTION = CaptionConstraints.from_json(
    {
        "objects": [
            {"shape": "circle", "colour": "red", "size": "large"},
            {"shape": "square", "colour": "blue", "size": "small"},
        ],
        "relations": [{"subject": 0, "relation": "left_of", "object": 1}],
        "background": {"pattern": "striped"},
    }
)
CIRCLE = _obj("circle", "red", "large", "top", "left")
SQUARE = _obj("square", "blue", "small", "bottom", "right")


@pytest.mark.parametrize(
    "scene, expected",
    [
        (_scene(CIRCLE, SQUARE), 8),  # everything
        (_scene(CIRCLE, SQUARE, pattern="plain"), 7),  # wrong background
        (_scene(CIRCLE | {"colour": "green"}, SQUARE), 7),  # wrong colour ("close, but the wrong colour")
        (_scene(CIRCLE | {"column": "right", "x": 5 / 6}, SQUARE | {"column": "left", "x": 1 / 6}), 7),  # relation
        (_scene(CIRCLE), 4),  # no square: 3 circle atoms + background; the relation needs both objects
        (_scene(SQUARE | {"colour": "red"}, pattern="plain"), 2),  # one object: best used as the square (small square)
        (_scene(_obj("star", "white", "small", "top", "left"), pattern="noisy"), 1),  # only "small" (as the square)
        (
            _scene(
                _obj("star", "white", "large", "top", "left"),
                _obj("ring", "black", "large", "top", "right"),
                pattern="noisy",
                colour="pink",
            ),
            2,
        ),  # both large, only one can be the circle; + the relation
    ],
)
def test_closeness_is_the_share_of_the_query_constraints_met(scene, expected):
    assert CAPTION.n_atoms() == 8
    assert constraint_share(CAPTION, scene) == expected / 8
    assert (constraint_share(CAPTION, scene) == 1.0) == CAPTION.satisfied_by(scene)


def test_distinct_objects_are_needed_for_two_constraints():
    two_circles = CaptionConstraints.from_json(
        {"objects": [{"shape": "circle", "colour": "red"}, {"shape": "circle", "colour": "red"}]}
    )
    assert constraint_share(two_circles, _scene(CIRCLE)) == 0.5
    assert constraint_share(two_circles, _scene(CIRCLE, SQUARE | {"shape": "circle", "colour": "red"})) == 1.0


def test_closeness_one_is_exactly_relevance_on_a_split():
    task, _ = tiny_task(40)
    assert isinstance(task.closeness, SceneCloseness) and task.truth_kind == "scene_graph"
    for q in range(task.n_queries):
        relevant = set(task.relevance.row(q).tolist())
        close = [task.closeness(q, g) for g in range(task.n_gallery)]
        assert all(0.0 <= c <= 1.0 for c in close)
        assert {g for g, c in enumerate(close) if c == 1.0} == relevant, q


def test_caption_overlap_on_real_captions():
    overlap = CaptionOverlap(
        ["A man riding a horse on the beach.", "the of a"], [{"man", "horse", "beach", "ride"}, {"dog", "beach"}]
    )
    assert overlap.wanted[0] == {"man", "riding", "horse", "beach"}
    assert overlap(0, 0) == 3 / 4  # "riding" is not "ride": words, not meanings
    assert overlap(0, 1) == 1 / 4
    assert math.isnan(overlap(1, 0))  # no content words: no closeness (unsure)


def _graded(closeness, **kw):
    cfg = dict(ps_threshold=0.6, ns_threshold=0.4, noise=0.0, seed=0) | kw
    return GradedUser(closeness, **cfg)


def test_bands_noise_and_unsure():
    table = {0: 1.0, 1: 0.75, 2: 0.6, 3: 0.5, 4: 0.4, 5: 0.2, 6: float("nan")}
    user = _graded(lambda q, g: table[g])
    shown = torch.tensor([[0, 1, 2, 3, 4, 5, 6]])
    relevant = torch.zeros(1, 7, dtype=torch.bool)
    relevant[0, 0] = True
    m = user.mark([0], shown, relevant)
    assert m.ps.tolist() == [[True, True, True, False, False, False, False]]
    assert m.ns.tolist() == [[False, False, False, False, False, True, False]]
    assert m.unsure.tolist() == [[False, False, False, True, True, False, True]]  # 0.4 <= c < 0.6, and NaN
    assert m.match.tolist() == relevant.tolist()
    assert m.closeness[0, :6].tolist() == pytest.approx([1.0, 0.75, 0.6, 0.5, 0.4, 0.2])
    # noise: a sure mark becomes the opposite one; unsure stays unsure; the same draw every time
    many = torch.arange(2000).reshape(200, 10) % 7
    queries = list(range(200))
    rel = torch.zeros(200, 7, dtype=torch.bool)
    clean = _graded(lambda q, g: table[g]).mark(queries, many, rel)
    noisy = _graded(lambda q, g: table[g], noise=0.2, seed=5).mark(queries, many, rel)
    again = _graded(lambda q, g: table[g], noise=0.2, seed=5).mark(queries, many, rel)
    other = _graded(lambda q, g: table[g], noise=0.2, seed=6).mark(queries, many, rel)
    assert torch.equal(noisy.ps, again.ps) and not torch.equal(noisy.ps, other.ps)
    assert torch.equal(noisy.unsure, clean.unsure)
    sure = ~clean.unsure
    flipped = (noisy.ps != clean.ps)[sure].float().mean().item()
    assert 0.15 < flipped < 0.25
    assert torch.equal(noisy.ps[sure], (clean.ps ^ (noisy.ps != clean.ps))[sure])
    assert not (noisy.ps & noisy.ns).any()


def test_noise_draws_are_a_function_of_seed_query_and_image_only():
    q, g = np.arange(50)[:, None], np.arange(30)[None, :]
    u = uniform(3, q, g)
    assert u.shape == (50, 30) and (u >= 0).all() and (u < 1).all()
    assert np.array_equal(u[7:9, 4:6], uniform(3, q[7:9], g[:, 4:6]))  # any chunking, any order
    assert abs(u.mean() - 0.5) < 0.03 and not np.array_equal(u, uniform(4, q, g))


def _chunk(task, gallery, relevant, user, **fb):
    config = from_dict(FeedbackConfig, {"rounds": 2, "display": 4, **fb}, "feedback")
    model = FakeModel()
    scorer = GalleryScorer(model, gallery, model.score, batch_size=64)
    n = task.n_queries
    return Chunk(0, n, scorer.scores(scorer.encode_texts(task.queries)), relevant, task, scorer, user, config)


@pytest.mark.parametrize("arm", ["exclude", "refresh"])
def test_the_users_never_read_labels_of_unshown_items(arm):
    """Poison every relevance label the user must not see: the marks, the transcript, the
    exclusions and the refreshed scores are the same; the graded marks ignore even the
    shown labels (only ``match`` reads them)."""
    task, gallery = tiny_task(30)
    n = task.n_queries
    clean = torch.zeros(n, task.n_gallery, dtype=torch.bool)
    for q in range(n):
        clean[q, torch.from_numpy(task.relevance.row(q))] = True
    for marker in (BinaryUser(), _graded(task.closeness, noise=0.2)):
        user = SimulatedUser(task.truths, marker=marker)
        runs = []
        for poison in (False, True):
            relevant = clean.clone()
            chunk = _chunk(task, gallery, relevant, user)
            state = ARMS[arm].init(chunk)
            for t in range(2):
                shown = top_shown(state.scores, state.excluded, chunk.config.display)  # what step will show
                relevant.copy_(clean)
                if poison:  # every label of an item not shown this round, flipped
                    mask = torch.ones_like(relevant)
                    mask.scatter_(1, shown, False)
                    relevant[mask] = ~clean[mask]
                ARMS[arm].step(chunk, state, t)
            runs.append((state.log, state.excluded.clone(), state.scores.clone()))
        assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])
    graded = _graded(task.closeness, noise=0.2)
    shown = torch.arange(n * 4).reshape(n, 4) % task.n_gallery
    a, b = graded.mark(range(n), shown, clean), graded.mark(range(n), shown, ~clean)
    assert torch.equal(a.ps, b.ps) and torch.equal(a.ns, b.ns) and torch.equal(a.match, ~b.match)


def test_refresh_formula_with_ps_ns_and_unsure():
    prev = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sims = torch.tensor(
        [
            [
                [1.0, 0.0, 0.0, 0.0],  # shown item 0: PS
                [0.0, 1.0, 0.0, 0.0],  # shown item 1: unsure
                [0.0, 0.0, 2.0, 0.0],
            ]
        ]
    )  # shown item 2: NS
    ps = torch.tensor([[True, False, False]])
    ns = torch.tensor([[False, False, True]])
    w = RefreshConfig(w0=1.0, w_ps=0.5, w_ns=0.25, scale="none", kernel="mean")
    # s = w0 prev + w_ps mean(PS rows) - w_ns mean(NS rows); the unsure row is in neither
    assert refreshed(prev, sims, ps, w, ns).tolist() == [[1.5, 2.0, 2.5, 4.0]]
    # without ns: the binary user's NS = every shown item not PS (the unsure row counts as NS)
    assert refreshed(prev, sims, ps, w).tolist() == [[1.5, 1.875, 2.75, 4.0]]
    assert torch.equal(refreshed(prev, sims, ps, w, ~ps), refreshed(prev, sims, ps, w))
    nothing = torch.zeros_like(ps)
    assert torch.equal(refreshed(prev, sims, nothing, w, nothing), prev)  # all unsure: scores unchanged


def _protocol(task, gallery, user_config, arms=("none", "exclude", "refresh")):
    fb = from_dict(
        FeedbackConfig,
        {"rounds": 3, "display": 3, "chunk_size": 32, "arms": list(arms), "user": user_config},
        "feedback",
    )
    model = FakeModel()
    scorer = GalleryScorer(model, gallery, model.score, batch_size=16)
    user = SimulatedUser.from_config(task.truths, task.closeness, fb.user, 0)
    records = []
    res = run_protocol(task, scorer, scorer.encode_texts(task.queries), fb, user, on_query=records.append)
    return fb, res, records


def test_graded_protocol_marks_close_items_excludes_non_matches_and_records_itself():
    task, gallery = tiny_task(40)
    fb, res, records = _protocol(task, gallery, {"model": "graded", "noise": 0.0})
    marks = res.marks()
    assert set(marks) == {"exclude", "refresh"} and marks["refresh"]["unsure"] > 0
    assert marks["refresh"]["ps"] > marks["refresh"]["match"]  # close but not relevant: PS all the same
    for rec in records:
        for r in rec["arms"]["refresh"]["rounds"]:
            assert len(r["closeness"]) == len(r["shown"]) == 3
            for g, c in zip(r["shown"], r["closeness"], strict=True):
                kind = "ps" if c >= 0.6 else "ns" if c < 0.4 else "unsure"
                assert g in r[kind]
    ex = res.ranks["exclude"]
    assert (np.diff(ex, axis=0) <= 0).all()  # dropping shown non-relevant items never worsens a rank
    result = build_result(
        _cfg(),
        fb,
        res,
        task,
        llm=None,
        user_seed=0,
        environment={},
        provenance={},
        timings={},
        transcript=Path("t.jsonl"),
    )
    assert result["protocol"]["user"] == {
        "model": "graded",
        "ps_threshold": 0.6,
        "ns_threshold": 0.4,
        "noise": 0.0,
        "unsure_rate": 0.0,
        "ground_truth": "scene_graph",
        "seed": 0,
        "closeness": "constraint_share",
    }
    assert result["user_marks"] == marks
    assert recorded_feedback_config(result["protocol"]["feedback_config"]) == fb


def test_binary_user_is_the_protocol_before_graded_marks():
    task, gallery = tiny_task(40)
    fb_b, res_b, rec_b = _protocol(task, gallery, {"model": "binary"})
    model = FakeModel()
    scorer = GalleryScorer(model, gallery, model.score, batch_size=16)
    before = []
    res_0 = run_protocol(
        task, scorer, scorer.encode_texts(task.queries), fb_b, SimulatedUser(task.truths), on_query=before.append
    )
    for arm in res_b.ranks:
        assert np.array_equal(res_b.ranks[arm], res_0.ranks[arm])
    assert rec_b == before and "closeness" not in rec_b[0]["arms"]["refresh"]["rounds"][0]
    result = build_result(
        _cfg(),
        fb_b,
        res_b,
        task,
        llm=None,
        user_seed=0,
        environment={},
        provenance={},
        timings={},
        transcript=Path("t.jsonl"),
    )
    assert result["protocol"]["user"] == {
        "model": "binary",
        "unsure_rate": 0.0,
        "ground_truth": "scene_graph",
        "seed": 0,
    }
    # a binary run hashes as the same run did before the user models existed (user: unsure_rate only)
    old = recorded_feedback_config(
        {k: v for k, v in result["protocol"]["feedback_config"].items()} | {"user": {"unsure_rate": 0.0}}
    )
    assert old == fb_b and result_hash(_cfg(), old) == result["config_hash"]
    assert result_hash(_cfg(), FeedbackConfig()) != result["config_hash"]  # graded is another protocol
    _, res_g, _ = _protocol(task, gallery, {"model": "graded"})
    assert not np.array_equal(res_g.ranks["refresh"], res_b.ranks["refresh"])


def _cfg():
    from benchmark.config import build_run_config

    return build_run_config({"model": "clip", "dataset": "synthetic", "size": "tiny", "tag": "default", "seed": 0})


@pytest.mark.parametrize(
    "user, message",
    [
        ({"model": "gradual"}, "feedback.user.model must be one of binary, graded"),
        ({"ps_threshold": 0.0}, "feedback.user.ps_threshold must lie in (0, 1]"),
        ({"ps_threshold": float("nan")}, "feedback.user.ps_threshold"),
        ({"ps_threshold": 1.5}, "feedback.user.ps_threshold"),
        ({"ps_threshold": 0.5, "ns_threshold": 0.6}, "feedback.user.ns_threshold must lie in [0, ps_threshold = 0.5]"),
        ({"ns_threshold": -0.1}, "feedback.user.ns_threshold"),
        ({"noise": 0.6}, "feedback.user.noise must lie in [0, 0.5]"),
        ({"noise": float("nan")}, "feedback.user.noise"),
        ({"unsure_rate": 2.0}, "feedback.user.unsure_rate"),
    ],
)
def test_user_options_are_validated(user, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(UserConfig, user, "feedback.user")
    assert UserConfig(ps_threshold=0.5, ns_threshold=0.5).ps_threshold == 0.5  # no unsure band is allowed


def test_graded_user_needs_a_closeness():
    with pytest.raises(ValueError, match="closeness"):
        SimulatedUser.from_config([], None, UserConfig(model="graded"), 0)
    assert isinstance(SimulatedUser.from_config([], None, UserConfig(model="binary"), 0).marker, BinaryUser)
