"""The first JSON object in a question writer's text, found in bounded time and nesting.

A model may wrap the object in prose or a Markdown fence, so every ``{`` is a candidate
start, in order, and the first that parses as a JSON object wins (what ``raw_decode`` at
each ``{`` gave before). Trying ``raw_decode`` blindly at each ``{`` of a reply nested
100k deep raised ``RecursionError`` and cost time quadratic in the length; here each
candidate is first scanned (strings and escapes honoured) up to its closing brace:

* a candidate nested deeper than :data:`MAX_DEPTH` is skipped (the objects asked for are
  4 levels deep); the parser never sees it, so it cannot recurse;
* the scans of all candidates together pass over at most :data:`SCAN_BUDGET_PER_CHAR` times
  the text's length (plus 1 M characters) and stop at 500,000 brackets and quotes (about
  0.6 s on this machine); past that the text counts as holding no object;
* numbers the parser refuses (an integer of more than 4,300 digits) make that candidate
  fail, not the run.

Whatever fails ends in an :class:`~benchmark.feedback.llm.base.LLMError` with reason
``invalid_output``: the round falls back to score refreshing.
"""

from __future__ import annotations

import json
import re

from benchmark.feedback.llm.base import LLMError

#: candidates nested deeper than this are skipped
MAX_DEPTH = 64
#: the scans of all candidates together pass over at most this many characters per character
#: of the text (plus :data:`SCAN_BUDGET_MIN`), and stop at :data:`SCAN_STEPS` brackets and quotes
SCAN_BUDGET_PER_CHAR = 64
SCAN_BUDGET_MIN = 1_000_000
SCAN_STEPS = 500_000

_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _span_end(text: str, start: int, budget: list[int]) -> int | None:
    """The index after the brace closing ``text[start]``, or None (unclosed, too deep, or
    the scan budget spent). ``budget`` holds the characters and the steps left; both decrease."""
    depth, i, in_string = 0, start, False
    while True:
        m = _SPECIAL.search(text, i)
        if m is None:
            budget[0] -= len(text) - i
            return None
        j = m.start()
        budget[0] -= j - i + 1
        budget[1] -= 1
        if budget[0] <= 0 or budget[1] <= 0:
            return None
        c, i = text[j], j + 1
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
            if depth > MAX_DEPTH:
                return None
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i


def _excerpt(text: str, n: int = 80) -> str:
    flat = " ".join(text[: 4 * n].split())
    return repr(flat[:n] + ("..." if len(flat) > n or len(text) > 4 * n else ""))


def first_json_object(text: str) -> dict:
    """The first ``{...}`` in ``text`` that parses as a JSON object (see the module docstring)."""
    decoder = json.JSONDecoder()
    budget = [SCAN_BUDGET_PER_CHAR * len(text) + SCAN_BUDGET_MIN, SCAN_STEPS]
    start = text.find("{")
    while start != -1 and budget[0] > 0 and budget[1] > 0:
        end = _span_end(text, start, budget)
        if end is not None:
            try:
                obj, stop = decoder.raw_decode(text[start:end])
            except (ValueError, RecursionError):  # ValueError: not JSON, or an integer too long to convert
                obj, stop = None, 0
            if isinstance(obj, dict) and stop == end - start:
                return obj
        start = text.find("{", start + 1)
    raise LLMError("invalid_output", f"no JSON object in the output ({_excerpt(text)})")
