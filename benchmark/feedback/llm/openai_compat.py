"""``--llm openai:<base url>``: any OpenAI-compatible chat-completions server (vLLM,
llama.cpp, Ollama), over httpx.

``POST <base url>/chat/completions`` with ``{"model", "messages", "temperature": 0,
"max_tokens", "seed"}`` (greedy); the answer is ``choices[0].message.content``. A bearer
token is sent when the environment variable ``api_key_env`` is set; otherwise credentials in
the base URL (``http://user:password@host/v1``) are sent as HTTP basic auth. Limits of one
request:

* ``timeout_s`` is a **total** deadline: connecting, sending and reading the whole reply
  (``asyncio.wait_for`` around the exchange cancels it where it is), so a server that
  drips one byte a second is cut at ``timeout_s``, not held for as long as it keeps sending;
* at most ``max_reply_bytes`` of body (after decompression; a larger ``Content-Length`` is
  refused before reading);
* no redirect is followed: a 3xx answer is an ``http_error`` that names where it pointed.
  Credentials, the bearer token or the basic auth, therefore go to the base URL's origin only.

Every URL shown (``describe()``, error details, hence the result file, the transcript and
stdout) has its credentials redacted (:mod:`.redact`). A timeout, an unreachable server,
HTTP 429 or 5xx is retried ``retries`` times after ``retry_backoff_s * 2**attempt`` seconds.
Failures raise :class:`~benchmark.feedback.llm.base.LLMError`: ``timeout``, ``unreachable``,
``http_error`` (with the status), ``malformed_response`` (a body that is not a
chat-completions response, or too large).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import ssl
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from benchmark.feedback.llm.base import LLMError, Message
from benchmark.feedback.llm.limits import DEFAULT_MAX_REPLY_BYTES, check_limits
from benchmark.feedback.llm.redact import redact_text, redact_url

if TYPE_CHECKING:
    from benchmark.feedback.config import LLMConfig

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class _TooLarge(Exception):
    pass


class _Redirect(Exception):
    def __init__(self, status: int, location: str) -> None:
        self.status, self.location = status, location


def _run(coro: Coroutine) -> Any:
    """Run ``coro`` to completion from synchronous code (in a helper thread when this thread
    already runs an event loop, e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAICompatBackend:
    def __init__(
        self,
        base_url: str,
        *,
        model: str = "default",
        timeout_s: float = 60.0,
        retries: int = 2,
        retry_backoff_s: float = 1.0,
        max_tokens: int = 384,
        seed: int = 0,
        api_key: str | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        check_limits(timeout_s, max_reply_bytes)
        base = httpx.URL(base_url)
        self._auth = httpx.BasicAuth(base.username, base.password) if base.userinfo else None
        base = base.copy_with(userinfo=b"") if base.userinfo else base
        self._url = base.copy_with(path=base.path.rstrip("/") + "/chat/completions")
        self.url = redact_url(str(self._url))  # what is shown: credentials redacted
        self.base_url = redact_url(base_url)
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.max_tokens = max_tokens
        self.max_reply_bytes = max_reply_bytes
        self.seed = seed
        self._api_key = api_key
        self._ssl: ssl.SSLContext | None = None  # made once (loading the CA store takes ~20 ms)

    @classmethod
    def from_spec(cls, spec: str, config: LLMConfig) -> OpenAICompatBackend:
        return cls(
            spec.partition(":")[2],
            model=config.model,
            timeout_s=config.timeout_s,
            retries=config.retries,
            retry_backoff_s=config.retry_backoff_s,
            max_tokens=config.max_new_tokens,
            api_key=os.environ.get(config.api_key_env) or None,
            max_reply_bytes=config.max_reply_bytes,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "spec": f"openai:{self.base_url}",
            "label": f"OpenAI-compatible server {self.base_url} (model {self.model!r})",
            "is_llm": True,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
        }

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> bytes:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # the system's CAs, as urllib used
        auth = None if self._api_key else self._auth  # a bearer token wins over the URL's basic auth
        async with (
            httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, verify=self._ssl, auth=auth) as client,
            client.stream("POST", self._url, content=body, headers=headers) as resp,
        ):
            if resp.is_redirect:
                raise _Redirect(resp.status_code, resp.headers.get("location", ""))
            resp.raise_for_status()
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_reply_bytes:
                raise _TooLarge(f"Content-Length {int(declared)}")
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_reply_bytes:
                    raise _TooLarge(f"more than {size} bytes read")
                chunks.append(chunk)
            return b"".join(chunks)

    async def _request_within_deadline(self, body: bytes, headers: dict[str, str]) -> bytes:
        return await asyncio.wait_for(self._exchange(body, headers), self.timeout_s)  # cancels it at the deadline

    def _request(self, messages: Sequence[Message]) -> bytes:
        body = json.dumps(
            {
                "model": self.model,
                "messages": list(messages),
                "temperature": 0,
                "max_tokens": self.max_tokens,
                "seed": self.seed,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return _run(self._request_within_deadline(body, headers))

    def _classify(self, e: Exception) -> tuple[LLMError, bool]:
        """(the counted error, whether to retry) of a failed request."""
        if isinstance(e, _Redirect):
            return LLMError(
                "http_error",
                f"HTTP {e.status} from {self.url}: a redirect to {redact_url(e.location)!r}, "
                "not followed (credentials go to the base URL's origin only); give the "
                "final URL as the base URL",
            ), False
        if isinstance(e, _TooLarge):
            return LLMError(
                "malformed_response",
                f"{self.url}: the reply is larger than feedback.llm.max_reply_bytes={self.max_reply_bytes} ({e})",
            ), False
        if isinstance(e, httpx.HTTPStatusError):
            code = e.response.status_code
            return LLMError("http_error", f"HTTP {code} from {self.url}"), code in _RETRY_STATUS
        if isinstance(e, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
            return LLMError("timeout", f"no complete answer from {self.url} within {self.timeout_s} s"), True
        if isinstance(e, (httpx.ConnectError, httpx.NetworkError, ConnectionError)):
            return LLMError("unreachable", f"{self.url}: {type(e).__name__}: {redact_text(str(e))}"), True
        if isinstance(e, (httpx.RemoteProtocolError, httpx.DecodingError)):  # a broken exchange
            return LLMError("malformed_response", f"{self.url}: {type(e).__name__}"), False
        return LLMError("unreachable", f"{self.url}: {type(e).__name__}: {redact_text(str(e))}"), True

    def generate(self, messages: Sequence[Message]) -> str:
        for attempt in range(self.retries + 1):
            try:
                raw = self._request(messages)
                break
            except (OSError, asyncio.TimeoutError, httpx.HTTPError, _Redirect, _TooLarge) as e:
                err, retry = self._classify(e)
                if not retry or attempt == self.retries:
                    raise err from None
                time.sleep(self.retry_backoff_s * 2**attempt)
        return _content(raw, self.url)


def _content(raw: bytes, url: str) -> str:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:  # ValueError: also a huge integer
        raise LLMError("malformed_response", f"{url}: not a chat-completions response ({type(e).__name__})") from None
    if not isinstance(content, str):
        raise LLMError("malformed_response", f"{url}: choices[0].message.content is not a string")
    return content
