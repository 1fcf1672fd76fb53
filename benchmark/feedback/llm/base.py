"""The interface every question writer honours, and the one error type its failures raise.

A backend turns chat messages into text: ``generate(messages) -> str``, where a message is
``{"role": "system" | "user" | "assistant", "content": str}``. It describes itself with
``describe()`` (spec, label, whether it is an LLM). Any failure -- an unreachable server, a
timeout, an HTTP error, a malformed response, text that is not the JSON asked for -- is an
:class:`LLMError` with one of the :data:`REASONS`; the protocol counts the reason and falls
back to score refreshing for that round, so a run never crashes on its backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from benchmark.feedback.llm.redact import redact_text

Message = dict[str, str]

#: why an LLM round fell back to score refreshing
REASONS = (
    "unreachable",  # connection refused, DNS failure, reset
    "timeout",  # no (complete) answer within the timeout, after the retries
    "http_error",  # an HTTP error status (after retries for 429 / 5xx)
    "malformed_response",  # the server's body is not an OpenAI chat-completions response
    "invalid_output",  # the generated text is not the JSON asked for, or fails validation
    "nothing_to_ask",  # the rules writer found fewer questions than asked for (no LLM failed)
    "backend_error",  # anything else the backend raised
)


class LLMError(RuntimeError):
    """A backend failure with its counted ``reason`` (one of :data:`REASONS`) and a detail
    (with any URL in it redacted: the detail is recorded in the transcript)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown LLM failure reason {reason!r}; expected one of {REASONS}")
        detail = redact_text(detail)
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@runtime_checkable
class LLMBackend(Protocol):
    def generate(self, messages: Sequence[Message]) -> str: ...

    def describe(self) -> dict[str, Any]: ...
