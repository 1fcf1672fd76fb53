"""The bounds of one request to an LLM server: a total deadline and a largest reply.

Kept apart from the HTTP client so that checking a config (``LLMConfig``) does not import it.
"""

from __future__ import annotations

import math

#: a reply larger than this is refused by default (a chat completion of 384 tokens is ~2 kB)
DEFAULT_MAX_REPLY_BYTES = 1_000_000
#: bounds of ``max_reply_bytes`` and ``timeout_s`` (checked by LLMConfig and by the backend)
MAX_REPLY_BYTES_RANGE = (1_024, 64_000_000)
MAX_TIMEOUT_S = 3_600.0


def check_limits(timeout_s: float, max_reply_bytes: int, where: str = "feedback.llm") -> None:
    """ValueError unless the request limits are usable (NaN and infinities refused)."""
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not math.isfinite(timeout_s)
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        raise ValueError(
            f"{where}.timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}], got {timeout_s!r}"
        )
    lo, hi = MAX_REPLY_BYTES_RANGE
    if isinstance(max_reply_bytes, bool) or not isinstance(max_reply_bytes, int) or not lo <= max_reply_bytes <= hi:
        raise ValueError(f"{where}.max_reply_bytes must be an integer in [{lo}, {hi}], got {max_reply_bytes!r}")
