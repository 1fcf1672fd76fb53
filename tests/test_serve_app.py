"""``bench serve``'s app in process (FastAPI TestClient): every route, its error cases, and the
rounds against the feedback package's own updates, on a tiny SynthScenes split with the
feedback tests' fake model (no training, no browser)."""

from __future__ import annotations

import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import FeedbackConfig, RefreshConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.rules import RulesBackend
from benchmark.feedback.ranking import top_shown
from benchmark.feedback.refine import Refiner
from benchmark.serve.app import AppState, create_app
from benchmark.serve.engine import Searcher
from benchmark.serve.gallery import Gallery, gallery_of
from benchmark.serve.llm_steps import LLMSteps
from benchmark.serve.loading import Loaded
from benchmark.serve.thumbnails import Thumbnails
from lightning_modules.base import Encoded
from tests.feedback_helpers import FakeModel, tiny_split
from tests.feedback_helpers import gallery_of as encoded_gallery

K = 6
QUERY = "Find images of a red circle."


class LengthModel(FakeModel):
    """The fake model with a per-query length, as IDQ-Former's QScaler allots: one per word."""

    def encode_texts(self, texts) -> Encoded:
        enc = super().encode_texts(texts)
        return Encoded(enc.emb, torch.tensor([len(t.split()) for t in texts]))


class FailingBackend:
    def generate(self, messages):
        raise LLMError("unreachable", "connection refused")

    def describe(self):
        return {"spec": "fail", "label": "always fails", "is_llm": False}


def _gallery(tmp_path, n: int = 40) -> Gallery:
    es, records, scenes = tiny_split(n)
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    for i, r in enumerate(records):
        Image.new("RGB", (48, 32), (5 * i % 255, 90, 160)).save(root / "images" / f"{r.image_id}.png")
    g = gallery_of(es, records, root, encoded_gallery(scenes))
    paths = tuple(root / "images" / f"{i}.png" for i in g.image_ids)
    return Gallery(g.image_ids, paths, g.captions, root, g.encoded, g.scenes)


def _state(tmp_path, model=None, backend=None, fb=None, gallery=None, info=None) -> AppState:
    fb = fb or FeedbackConfig()
    gallery = gallery or _gallery(tmp_path)
    steps = LLMSteps(Refiner(backend or RulesBackend(), fb.llm))
    searcher = Searcher(model or LengthModel(), gallery, fb, steps, top_k=K)
    info = info or {"model": "fake", "size": "tiny", "dataset": "synthetic", "split": "test", "n_images": len(gallery)}
    info.setdefault("question_writer", "rules")
    return AppState(Loaded(searcher, Thumbnails(gallery, 64), info), tmp_path / "results" / "serve.jsonl")


@pytest.fixture
def client(tmp_path):
    state = _state(tmp_path)
    with TestClient(create_app(state)) as c:
        c.state_ = state  # the tests read the searcher behind the app
        yield c


def _search(client, query=QUERY):
    r = client.post("/api/search", json={"query": query})
    assert r.status_code == 200, r.text
    return r.json()


def _expected_refresh(searcher, before, shown, ps, ns, fb):
    """The feedback protocol's own refresh of ``before`` for these marks (the engine must match it)."""
    return refreshed(
        before[None],
        searcher.scorer.shown(torch.tensor([shown])),
        torch.tensor([[g in ps for g in shown]]),
        fb.refresh,
        torch.tensor([[g in ns for g in shown]]),
    )[0]


def test_page_is_served_escaped_with_a_strict_content_policy(tmp_path):
    state = _state(tmp_path, info={"model": "<b>bold</b>", "size": "tiny", "dataset": "d", "split": "test"})
    with TestClient(create_app(state)) as c:
        r = c.get("/")
    assert r.status_code == 200
    assert "&lt;b&gt;bold&lt;/b&gt;" in r.text and "<b>bold</b>" not in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert 'src="/static/app.js"' in r.text and "http" not in r.text.replace("http-equiv", "")


def test_static_assets_come_from_the_package_and_never_use_inner_html(client):
    js, css = client.get("/static/app.js"), client.get("/static/app.css")
    assert js.status_code == css.status_code == 200
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js.text
    assert "textContent" in js.text
    assert "http://" not in js.text + css.text and "https://" not in js.text + css.text and "@import" not in css.text
    assert client.get("/static/../app.py").status_code == 404


def test_info_reports_the_model_and_gallery(client):
    d = client.get("/api/info").json()
    assert d["ready"] is True and d["n_images"] == 40 and d["top_k"] == K


def test_search_shows_the_top_k_by_the_models_score_with_the_query_length(client):
    d = _search(client)
    searcher = client.state_.loaded.searcher
    expected = searcher.scorer.scores(LengthModel().encode_texts([QUERY]))[0]
    assert [r["index"] for r in d["results"]] == expected.topk(K).indices.tolist()
    assert d["query_length"] == len(QUERY.split())
    scores = [r["score"] for r in d["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["thumb"] == f"/thumbs/{r['index']}.png" for r in d["results"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "   "}, 400, "the query is empty"),
        ({"query": "x" * 1001}, 400, "at most 1000"),
        ({}, 422, "query"),
        ({"query": 5}, 422, "query"),
    ],
)
def test_bad_queries_get_a_json_error(client, body, status, message):
    r = client.post("/api/search", json=body)
    assert r.status_code == status
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_refresh_round_matches_the_feedback_update_and_drops_the_not_relevant(client):
    d = _search(client)
    searcher = client.state_.loaded.searcher
    before = searcher.get(d["search"]).scores.clone()
    shown = [r["index"] for r in d["results"]]
    ps, ns = [shown[2]], [shown[0]]
    r = client.post(f"/api/searches/{d['search']}/refresh", json={"relevant": ps, "not_relevant": ns})
    assert r.status_code == 200, r.text
    after = r.json()
    expected = _expected_refresh(searcher, before, shown, ps, ns, FeedbackConfig())
    assert torch.equal(searcher.get(d["search"]).scores, expected)  # the max kernel: bitwise
    excluded = torch.zeros(40, dtype=torch.bool)
    excluded[ns] = True
    assert [x["index"] for x in after["results"]] == top_shown(expected[None], excluded[None], K)[0].tolist()
    assert shown[0] not in [x["index"] for x in after["results"]]
    assert after["rounds"] == 1 and after["excluded"] == 1
    assert [x["index"] for x in after["results"]] != shown


@pytest.mark.parametrize(
    ("marks", "message"),
    [
        ({"relevant": [10_000]}, "only the results shown can be marked"),
        ("both", "both relevant and not relevant"),
        ({"relevant": "abc"}, "relevant"),
    ],
)
def test_bad_marks_get_a_json_error(client, marks, message):
    d = _search(client)
    if marks == "both":
        i = d["results"][0]["index"]
        marks = {"relevant": [i], "not_relevant": [i]}
    r = client.post(f"/api/searches/{d['search']}/refresh", json=marks)
    assert r.status_code in (400, 422) and message in r.json()["error"]


def test_unknown_search_is_404(client):
    for path in ("/api/searches/7/refresh", "/api/searches/7/questions", "/api/searches/7/answers"):
        body = {"answers": []} if path.endswith("answers") else {}
        r = client.post(path, json=body)
        assert r.status_code == 404 and "no search 7" in r.json()["error"]
    assert client.get("/api/searches/7").status_code == 404


def test_llm_round_shows_questions_then_the_refined_query(client):
    d = _search(client, "Find images of a circle.")
    shown = [r["index"] for r in d["results"]]
    q = client.post(f"/api/searches/{d['search']}/questions", json={"relevant": shown[:1], "not_relevant": shown[1:2]})
    assert q.status_code == 200, q.text
    pending = q.json()["pending"]
    assert pending and all(x["options"][-1] == "none / unsure" for x in pending["questions"])
    assert q.json()["rounds"] == 0  # nothing changes before the answers
    assert client.post(f"/api/searches/{d['search']}/answers", json={"answers": []}).status_code == 400
    bad = [x["options"][0] for x in pending["questions"]]
    bad[0] = "something else"
    assert (
        "one of the question's options"
        in client.post(f"/api/searches/{d['search']}/answers", json={"answers": bad}).json()["error"]
    )
    answers = [x["options"][0] for x in pending["questions"]]
    searcher = client.state_.loaded.searcher
    old = searcher.get(d["search"]).scores.clone()
    r = client.post(f"/api/searches/{d['search']}/answers", json={"answers": answers})
    assert r.status_code == 200, r.text
    v = r.json()
    refined = v["last_round"]["refined_query"]
    assert v["last_round"]["kind"] == "llm" and v["last_round"]["fallback"] is None
    assert refined and v["current_query"] == refined and v["query_length"] == len(refined.split())
    alpha = FeedbackConfig().llm.alpha
    new = searcher.scorer.scores(LengthModel().encode_texts([refined]))[0]
    assert torch.allclose(searcher.get(d["search"]).scores, alpha * new + (1 - alpha) * old)
    assert v["pending"] is None
    again = client.post(f"/api/searches/{d['search']}/answers", json={"answers": answers})
    assert again.status_code == 409


def test_a_failing_question_writer_falls_back_to_refreshing(tmp_path):
    state = _state(tmp_path, backend=FailingBackend())
    with TestClient(create_app(state)) as c:
        d = _search(c)
        shown = [r["index"] for r in d["results"]]
        r = c.post(f"/api/searches/{d['search']}/questions", json={"not_relevant": shown[:1]})
    v = r.json()
    assert r.status_code == 200 and v["pending"] is None
    assert v["last_round"]["kind"] == "llm" and v["last_round"]["fallback"] == "unreachable"
    assert v["rounds"] == 1 and shown[0] not in [x["index"] for x in v["results"]]


def test_export_writes_the_transcript_schema(client):
    d = _search(client)
    client.post(f"/api/searches/{d['search']}/refresh", json={"not_relevant": [d["results"][0]["index"]]})
    _search(client, "Find images of a blue square.")
    r = client.get("/api/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["query_index"] for x in lines] == [0, 1]
    first = lines[0]
    assert {"query_index", "query", "caption", "target_image_id", "n_relevant", "arms"} <= set(first)
    rounds = first["arms"]["interactive"]["rounds"]
    assert rounds[0]["round"] == 1 and rounds[0]["ns"] == [d["results"][0]["image_id"]]
    assert rounds[0]["shown"] == [x["image_id"] for x in d["results"]]
    assert client.state_.export_path.read_text() == r.text
    one = client.get(f"/api/export?search={d['search']}")
    assert len(one.text.splitlines()) == 1
    assert client.get("/api/export?search=99").status_code == 404


def test_thumbnails_only_from_inside_the_data_root(tmp_path):
    g = _gallery(tmp_path)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    link = g.root / "images" / "link.png"
    link.symlink_to(outside)
    paths = list(g.paths)
    paths[1], paths[2], paths[3] = outside, g.root / "images" / ".." / ".." / "secret.png", link
    bare = Gallery(g.image_ids, tuple(paths), g.captions, g.root, g.encoded)  # no scenes: nothing to render
    with TestClient(create_app(_state(tmp_path, gallery=bare))) as c:
        ok = c.get("/thumbs/0.png")
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(ok.content)).size == (48, 32)
        for i in (1, 2, 3):
            r = c.get(f"/thumbs/{i}.png")
            assert r.status_code == 404 and "not inside the data root" in r.json()["error"]
        assert c.get("/thumbs/40.png").status_code == 404
        assert c.get("/thumbs/abc.png").status_code == 422
    rendered = Gallery(g.image_ids, tuple(paths), g.captions, g.root, g.encoded, g.scenes)
    with TestClient(create_app(_state(tmp_path, gallery=rendered))) as c:
        r = c.get("/thumbs/1.png")  # the file is outside the root: the scene graph is drawn instead
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)


def test_an_unavailable_server_says_why_everywhere(tmp_path):
    why = "no trained ours checkpoint (run `bench run --model ours --dataset synthetic --seed 0` first)"
    with TestClient(create_app(AppState(None, tmp_path / "x.jsonl", unavailable=why))) as c:
        page = c.get("/")
        assert page.status_code == 503 and "bench run --model ours" in page.text and "query" not in page.text.lower()
        assert c.get("/api/info").json() == {"ready": False, "error": why}
        for method, path in (("post", "/api/search"), ("get", "/api/export"), ("get", "/thumbs/0.png")):
            r = getattr(c, method)(path, **({"json": {"query": "a"}} if method == "post" else {}))
            assert r.status_code == 503 and r.json()["error"] == why


def test_an_unexpected_failure_is_a_json_500_without_a_traceback(tmp_path):
    class Broken(LengthModel):
        def encode_texts(self, texts):
            raise RuntimeError("the model broke")

    with TestClient(create_app(_state(tmp_path, model=Broken())), raise_server_exceptions=False) as c:
        r = c.post("/api/search", json={"query": "a red circle"})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError: the model broke)"}


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/api/search").status_code == 405


@pytest.mark.parametrize("kernel", ["mean", "max", "knn", "residual"])
@pytest.mark.parametrize("marks", [(1, 1), (0, 2), (3, 0), (0, 0)])
def test_refresh_from_the_marked_rows_equals_the_update_over_every_shown_row(tmp_path, kernel, marks):
    fb = FeedbackConfig(refresh=RefreshConfig(kernel=kernel))
    state = _state(tmp_path, fb=fb)
    searcher = state.loaded.searcher
    s = searcher.search(QUERY)
    shown, before = list(s.shown), s.scores.clone()
    ps, ns = shown[1 : 1 + marks[0]], shown[4 : 4 + marks[1]]
    searcher.refresh(s.index, ps, ns)
    expected = _expected_refresh(searcher, before, shown, ps, ns, fb)
    assert torch.allclose(s.scores, expected, rtol=1e-6, atol=1e-7)
