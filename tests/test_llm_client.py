"""The OpenAI-compatible client against misbehaving local servers (tests/llm_servers.py):
no redirect followed (credentials stay with their origin), a total deadline, a bounded
reply, credentials redacted from every URL shown or recorded; and the bounded JSON
extraction of replies, fuzzed with hypothesis."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.config import ConfigError, stable_hash, to_dict
from benchmark.feedback.config import FeedbackConfig, LLMConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.extract import MAX_DEPTH, first_json_object
from benchmark.feedback.llm.redact import redact_text, redact_tree, redact_url
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.record import redacted_feedback_config, result_hash
from benchmark.feedback.schema import parse_query, parse_questions
from tests.llm_servers import DRIP_S, completion, serve

MESSAGES = [{"role": "user", "content": 'INPUT JSON:\n{"task": "update", "query": "q"}'}]


def backend(url: str, **kw):
    return make_backend(LLMConfig(backend=f"openai:{url}", retries=kw.pop("retries", 0), retry_backoff_s=0.0, **kw))


@pytest.fixture(scope="module")
def servers():
    with serve() as (other, other_handler), serve(redirect_to=other) as (main, handler):
        yield main, handler, other, other_handler


def test_valid_answer_and_basic_auth_from_the_url(servers, monkeypatch):
    main, handler, _, _ = servers
    monkeypatch.setenv("OPENAI_API_KEY", "sk-topsecret")
    b = backend(main.replace("http://", "http://alice:pa%40ss@") + "/ok/v1")
    assert json.loads(b.generate(MESSAGES)) == {"query": "a red circle"}
    path, headers = handler.seen[-1]
    assert path == "/ok/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-topsecret"  # the api key wins over the URL's basic auth
    monkeypatch.delenv("OPENAI_API_KEY")  # read when the backend is built
    b = backend(main.replace("http://", "http://alice:pa%40ss@") + "/ok/v1")
    b.generate(MESSAGES)
    assert handler.seen[-1][1]["Authorization"] == "Basic " + base64.b64encode(b"alice:pa@ss").decode()
    shown = json.dumps(b.describe())
    assert "alice" not in shown and "pa%40ss" not in shown and "***@127.0.0.1" in shown


def test_redirect_to_another_port_is_not_followed_and_forwards_nothing(servers, monkeypatch):
    main, handler, other, other_handler = servers
    monkeypatch.setenv("OPENAI_API_KEY", "sk-topsecret")
    other_handler.seen.clear()
    with pytest.raises(LLMError) as e:
        backend(main.replace("http://", "http://bob:hunter2@") + "/redirect/v1", retries=2).generate(MESSAGES)
    assert e.value.reason == "http_error" and "HTTP 307" in e.value.detail and "not followed" in e.value.detail
    assert other.rpartition(":")[2] in e.value.detail  # it says where the redirect pointed
    assert other_handler.seen == []  # nothing reached the other origin: no token, no basic auth
    assert "hunter2" not in str(e.value) and "sk-topsecret" not in str(e.value)
    assert sum(p.startswith("/redirect/") for p, _ in handler.seen) >= 1


def test_slow_drip_is_cut_at_the_total_deadline(servers):
    main = servers[0]
    t = time.perf_counter()
    with pytest.raises(LLMError) as e:
        backend(f"{main}/drip/v1", timeout_s=1.0).generate(MESSAGES)
    elapsed = time.perf_counter() - t
    assert e.value.reason == "timeout" and "within 1.0 s" in e.value.detail
    # one byte every DRIP_S keeps a per-read timeout from ever firing (200 bytes: 40 s); the total one cuts at 1 s
    assert elapsed < 1.0 + 4 * DRIP_S, elapsed


@pytest.mark.parametrize("mode", ["huge", "flood", "bomb"])
def test_reply_size_is_bounded(servers, mode):
    t = time.perf_counter()
    with pytest.raises(LLMError) as e:
        backend(f"{servers[0]}/{mode}/v1", max_reply_bytes=1_000_000, timeout_s=20).generate(MESSAGES)
    assert e.value.reason == "malformed_response" and "max_reply_bytes=1000000" in e.value.detail
    assert time.perf_counter() - t < 10


def test_deep_reply_falls_back_cleanly(servers):
    text = backend(f"{servers[0]}/deep/v1", timeout_s=20, max_reply_bytes=2_000_000).generate(MESSAGES)
    with pytest.raises(LLMError) as e:
        parse_query(text)
    assert e.value.reason == "invalid_output"


def test_failure_details_redact_credentials(servers):
    with pytest.raises(LLMError) as e:
        backend(servers[0].replace("http://", "http://u:hunter2@") + "/err500/v1?api-key=k3y").generate(MESSAGES)
    assert e.value.reason == "http_error" and "hunter2" not in e.value.detail and "k3y" not in e.value.detail
    assert "//127.0.0.1" in e.value.detail and "api-key=***" in e.value.detail


def test_works_inside_a_running_event_loop(servers):
    async def inner():
        return backend(f"{servers[0]}/ok/v1").generate(MESSAGES)

    assert json.loads(asyncio.run(inner())) == {"query": "a red circle"}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 1e9}, "timeout_s"),
        ({"max_reply_bytes": 10}, "max_reply_bytes"),
        ({"max_reply_bytes": 10**12}, "max_reply_bytes"),
        ({"backend": "openai:http://u:hunter2@host:99999/v1"}, "openai:<base url>"),
        ({"backend": "opneai:http://u:hunter2@host/v1"}, "unknown backend"),
    ],
)
def test_limits_are_bounded_and_errors_redact(options, message):
    with pytest.raises(ConfigError) as e:
        LLMConfig(**options)
    assert message in str(e.value) and "hunter2" not in str(e.value)


# -- redaction and the recorded config -----------------------------------------------------------
@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://user:pw@host:8000/v1", "http://***@host:8000/v1"),
        ("https://tok@host/v1?api-key=abc&x=1", "https://***@host/v1?api-key=***&x=***"),
        ("http://[::1", "http://***"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"error at {url}: refused") == f"error at {shown}: refused"


def test_recorded_config_and_hash_carry_no_credentials():
    plain = FeedbackConfig(llm=LLMConfig(backend="openai:http://host:8000/v1"))
    secret = FeedbackConfig(llm=LLMConfig(backend="openai:http://u:hunter2@host:8000/v1"))
    assert "hunter2" not in json.dumps(redacted_feedback_config(secret))
    assert redacted_feedback_config(plain) == to_dict(plain)  # no credentials: recorded as before
    assert redact_tree({"a": ["http://u:p@h/x", 1]}) == {"a": ["http://***@h/x", 1]}


def test_result_hash_is_unchanged_by_the_new_option():
    from benchmark.config import RunConfig

    cfg, fb = RunConfig(model="clip"), FeedbackConfig()
    before = {k: v for k, v in to_dict(fb).items() if k != "similarity"}  # the hash of runs from before
    before["llm"].pop("max_reply_bytes")
    assert result_hash(cfg, fb) == stable_hash([cfg.config_hash(), before])


# -- the JSON extraction, bounded and fuzzed --------------------------------------------------
def test_extraction_keeps_its_behaviour_on_ordinary_replies():
    q = {
        "questions": [
            {"question": "Which colour?", "options": ["a red one", "a blue one"]},
            {"question": "Which shape?", "options": ["a circle", "a square"]},
        ]
    }
    for text in (
        json.dumps(q),
        f"Sure! Here you go:\n```json\n{json.dumps(q)}\n```",
        "{ not json } " + json.dumps(q),
        '{"a": "}{" ' + json.dumps(q),
    ):
        assert len(parse_questions(text)) == 2
    assert first_json_object('x {"a": {"b": [1, {"c": "}"}]}} y') == {"a": {"b": [1, {"c": "}"}]}}
    assert first_json_object('[1, 2] {"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    "text",
    [
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"a":[' * 100_000,
        "{" * 500_000,
        '{"' * 300_000,
        '{"query": ' + "9" * 5000 + "}",
        "[" * 200_000 + "]" * 200_000,
    ],
)
def test_pathological_replies_are_invalid_output_in_bounded_time(text):
    t = time.perf_counter()
    with pytest.raises(LLMError) as e:
        parse_query(text)
    assert e.value.reason == "invalid_output" and time.perf_counter() - t < 5


def test_depth_limit_is_where_stated():
    ok = '{"a":' * (MAX_DEPTH - 1) + '{"query": "x"}' + "}" * (MAX_DEPTH - 1)
    assert first_json_object(ok)["a"]
    too_deep = '{"a":' * MAX_DEPTH + '{"query": "x"}' + "}" * MAX_DEPTH
    found, depth = first_json_object(too_deep), 0  # the outermost candidate skipped, the next one taken
    while "a" in found:
        found, depth = found["a"], depth + 1
    assert found == {"query": "x"} and depth == MAX_DEPTH - 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.text(max_size=40),
    value=_json,
    suffix=st.text(max_size=40),
    depth=st.integers(0, 2000),
    digits=st.integers(1, 6000),
)
def test_fuzz_reply_parsing_never_crashes(prefix, value, suffix, depth, digits):
    nested = '{"k": ' * depth + json.dumps(value) + "}" * depth
    for text in (
        prefix + json.dumps(value) + suffix,
        prefix + nested + suffix,
        prefix + '{"query": ' + "7" * digits + "}" + suffix,
        prefix + "[" * depth + suffix,
    ):
        for parse in (parse_query, parse_questions):
            try:
                parse(text)
            except LLMError as e:
                assert e.reason == "invalid_output"
    if isinstance(value, dict) and not prefix.count("{") and "{" not in json.dumps(value)[1:]:
        assert first_json_object(prefix + json.dumps(value) + suffix) == json.loads(json.dumps(value))


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_completion_bodies_never_crash(body):
    from benchmark.feedback.llm.openai_compat import _content

    try:
        assert isinstance(_content(body, "http://x"), str)
    except LLMError as e:
        assert e.reason == "malformed_response"
    deep = completion("x")[:-1] + b', "z": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(LLMError):
        _content(deep, "http://x")
