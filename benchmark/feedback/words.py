"""Content words of free text: the reading of a caption shared by the simulated user's
:class:`~benchmark.feedback.user.CaptionTruth` and the ``caption_overlap`` closeness
(:mod:`benchmark.feedback.closeness`)."""

from __future__ import annotations

import re

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "to",
        "with",
        "and",
        "or",
        "is",
        "are",
        "be",
        "there",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "image",
        "picture",
        "photo",
        "one",
        "some",
        "any",
        "which",
        "what",
        "who",
        "whose",
        "where",
        "how",
        "do",
        "does",
        "it's",
        "has",
        "have",
        "show",
        "showing",
        "shows",
        "you",
        "your",
        "want",
        "wanted",
    ]
)


def content_words(text: str) -> set[str]:
    """Content words: lower case, plural "s" dropped, stop words and one-letter words removed."""
    out = set()
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _STOP or len(w) < 2:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out
