"""``--llm openai:<base url>``: any OpenAI-compatible chat-completions server (vLLM,
llama.cpp, Ollama), over the standard library's ``urllib`` (no new dependency).

``POST <base url>/chat/completions`` with ``{"model", "messages", "temperature": 0,
"max_tokens", "seed"}`` (greedy); the answer is ``choices[0].message.content``. A bearer
token is sent when the environment variable ``api_key_env`` is set. Each request waits at
most ``timeout_s``; a timeout, an unreachable server, HTTP 429 or 5xx is retried
``retries`` times after ``retry_backoff_s * 2**attempt`` seconds. Failures raise
:class:`~benchmark.feedback.llm.base.LLMError`: ``timeout``, ``unreachable``,
``http_error`` (with the status), ``malformed_response`` (a body that is not a
chat-completions response).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMError, Message

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class OpenAICompatBackend:
    def __init__(self, base_url: str, *, model: str = "default", timeout_s: float = 60.0, retries: int = 2,
                 retry_backoff_s: float = 1.0, max_tokens: int = 384, seed: int = 0,
                 api_key: str | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.max_tokens = max_tokens
        self.seed = seed
        self._api_key = api_key

    @classmethod
    def from_spec(cls, spec: str, config: LLMConfig) -> OpenAICompatBackend:
        return cls(spec.partition(":")[2], model=config.model, timeout_s=config.timeout_s, retries=config.retries,
                   retry_backoff_s=config.retry_backoff_s, max_tokens=config.max_new_tokens,
                   api_key=os.environ.get(config.api_key_env) or None)

    def describe(self) -> dict[str, Any]:
        return {"spec": f"openai:{self.base_url}", "label": f"OpenAI-compatible server {self.base_url} "
                f"(model {self.model!r})", "is_llm": True, "timeout_s": self.timeout_s, "retries": self.retries}

    def _request(self, messages: Sequence[Message]) -> bytes:
        body = json.dumps({"model": self.model, "messages": list(messages), "temperature": 0,
                           "max_tokens": self.max_tokens, "seed": self.seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 -- the user's server
            return resp.read()

    def _classify(self, e: Exception) -> tuple[LLMError, bool]:
        """(the counted error, whether to retry) of a failed request."""
        if isinstance(e, urllib.error.HTTPError):
            return LLMError("http_error", f"HTTP {e.code} from {self.url}"), e.code in _RETRY_STATUS
        if isinstance(e, urllib.error.URLError):
            timed_out = isinstance(e.reason, (TimeoutError, socket.timeout))
            return LLMError("timeout" if timed_out else "unreachable", f"{self.url}: {e.reason}"), True
        if isinstance(e, ConnectionError):  # refused, reset, closed without an answer
            return LLMError("unreachable", f"{self.url}: {type(e).__name__}"), True
        if isinstance(e, http.client.HTTPException):  # a broken HTTP exchange (bad status line, cut body)
            return LLMError("malformed_response", f"{self.url}: {type(e).__name__}"), False
        if isinstance(e, (TimeoutError, socket.timeout)):
            return LLMError("timeout", f"no answer from {self.url} within {self.timeout_s} s"), True
        return LLMError("unreachable", f"{self.url}: {type(e).__name__}: {e}"), True

    def generate(self, messages: Sequence[Message]) -> str:
        for attempt in range(self.retries + 1):
            try:
                raw = self._request(messages)
                break
            except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets: OSErrors
                err, retry = self._classify(e)
                if not retry or attempt == self.retries:
                    raise err from None
                time.sleep(self.retry_backoff_s * 2 ** attempt)
        return _content(raw, self.url)


def _content(raw: bytes, url: str) -> str:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LLMError("malformed_response", f"{url}: not a chat-completions response ({type(e).__name__})") from None
    if not isinstance(content, str):
        raise LLMError("malformed_response", f"{url}: choices[0].message.content is not a string")
    return content
