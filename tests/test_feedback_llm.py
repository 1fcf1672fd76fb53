"""LLM backends: a tiny random-init transformers causal LM, and a real local HTTP server
speaking OpenAI chat completions (valid answers, slow answers, HTTP 500, malformed JSON)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from benchmark.config import ConfigError
from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.prompts import read_input
from tests.feedback_helpers import tiny_task
from tests.test_feedback_protocol import _run

QUESTIONS = {
    "questions": [
        {
            "question": "What colour is the background?",
            "options": ["a pink background", "a gray background", "a teal background"],
        },
        {"question": "Which background pattern?", "options": ["a striped background", "a plain background"]},
    ]
}
REFINED = "a shape on a background chosen by the server"


def _completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    """Behaviour by URL prefix: /ok, /slow, /err500, /malformed."""

    requests: ClassVar[list[tuple[str, dict]]] = []

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append((self.path, body))
        mode = self.path.split("/")[1]
        if mode == "slow":
            time.sleep(1.0)
        if mode == "err500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        if mode == "malformed":
            payload = b'{"choices": [ this is not json'
        else:
            task = read_input(body["messages"])["task"]
            content = (
                "```json\n" + json.dumps(QUESTIONS) + "\n```" if task == "questions" else json.dumps({"query": REFINED})
            )
            payload = _completion(content)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _backend(url: str, **kw):
    return make_backend(
        LLMConfig(
            backend=f"openai:{url}",
            timeout_s=kw.pop("timeout_s", 5.0),
            retries=kw.pop("retries", 1),
            retry_backoff_s=0.0,
            model="tiny-test",
            **kw,
        )
    )


MESSAGES = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": 'INPUT JSON:\n{"task": "update", "query": "q"}'},
]


def test_openai_valid_answer(server):
    _Handler.requests.clear()
    backend = _backend(f"{server}/ok/v1")
    assert json.loads(backend.generate(MESSAGES)) == {"query": REFINED}
    path, body = _Handler.requests[-1]
    assert path == "/ok/v1/chat/completions" and body["model"] == "tiny-test" and body["temperature"] == 0
    assert body["messages"] == MESSAGES and backend.describe()["is_llm"] is True


@pytest.mark.parametrize(
    "mode, reason, attempts",
    [("slow", "timeout", 2), ("err500", "http_error", 2), ("malformed", "malformed_response", 1)],
)
def test_openai_failures_raise_the_counted_reason(server, mode, reason, attempts):
    _Handler.requests.clear()
    with pytest.raises(LLMError) as e:
        _backend(f"{server}/{mode}/v1", timeout_s=0.3, retries=1).generate(MESSAGES)
    assert e.value.reason == reason
    time.sleep(0.05)
    assert len(_Handler.requests) >= attempts and all(p.startswith(f"/{mode}/") for p, _ in _Handler.requests)


def test_openai_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    with pytest.raises(LLMError) as e:
        _backend(f"http://127.0.0.1:{port}/v1", retries=0).generate(MESSAGES)
    assert e.value.reason == "unreachable"


def test_protocol_uses_the_servers_answers_and_counts_its_failures(server):
    task, gallery = tiny_task(40)
    task = task.limited(6)
    res, records, _ = _run(task, gallery, backend=_backend(f"{server}/ok/v1"), rounds=2, max_queries=6)
    assert res.fallbacks() == {} and res.counts["llm_rounds"] == 12
    rounds = [r for rec in records for r in rec["arms"]["llm"]["rounds"]]
    assert all(r["refined_query"] == REFINED and r["fallback"] is None for r in rounds)
    assert all(
        [q["question"] for q in r["questions"]] == [q["question"] for q in QUESTIONS["questions"]] for r in rounds
    )
    # the refined query is embedded and scored: the llm arm's ranking differs from score refreshing
    assert res.ranks["llm"][1:].tolist() != res.ranks["refresh"][1:].tolist()

    res, _, _ = _run(task, gallery, backend=_backend(f"{server}/err500/v1", retries=0), rounds=2)
    assert res.fallbacks() == {"http_error": 12}
    assert res.ranks["llm"].tolist() == res.ranks["refresh"].tolist()


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A random-init 2-layer GPT-2 with a word-level tokenizer and a chat template, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-lm")
    words = [
        "<unk>",
        "<eos>",
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        "questions",
        "question",
        "options",
        "query",
        "a",
        "red",
        "circle",
        "background",
        "system",
        "user",
        "assistant",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    hf_tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    hf_tok.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(words), n_positions=64, n_embd=16, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_tiny_hf_model_output_is_garbage_and_every_round_falls_back(tiny_causal_lm):
    backend = make_backend(LLMConfig(backend=f"hf:{tiny_causal_lm}", max_new_tokens=6))
    assert backend.describe()["chat_template"] is True and backend.describe()["is_llm"] is True
    assert isinstance(backend.generate(MESSAGES), str)
    task, gallery = tiny_task(40)
    res, records, _ = _run(task.limited(4), gallery, backend=backend, rounds=2, max_queries=4)
    assert res.fallbacks() == {"invalid_output": 8} and res.counts["llm_rounds"] == 8
    assert res.ranks["llm"].tolist() == res.ranks["refresh"].tolist()
    assert all(r["fallback"] == "invalid_output" for rec in records for r in rec["arms"]["llm"]["rounds"])


def test_hf_backend_refuses_a_missing_model(tmp_path):
    with pytest.raises(ConfigError, match="--llm 'hf:"):
        make_backend(LLMConfig(backend=f"hf:{tmp_path / 'no-such-model'}"))
