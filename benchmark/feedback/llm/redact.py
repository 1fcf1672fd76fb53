"""Credentials out of every URL the suite prints or records.

A base URL may carry credentials: ``http://user:password@host/v1`` (sent as HTTP basic auth)
or a key in the query (``?api-key=...``, as some gateways take it). Wherever such a URL would
be shown -- a result file (``protocol.llm``, ``protocol.feedback_config``), the transcript (a
fallback's ``detail``), stdout, an error message -- it goes through :func:`redact_url` or
:func:`redact_text` first: the user information becomes ``***`` and every query value
``***`` (query keys stay, so the URL still says what was given). A URL without either is
returned unchanged, so records of runs without credentials are unchanged too.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """``url`` with its user information and query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL (e.g. a bad IPv6 literal): hide all after the scheme
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{MASK}" if sep else MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={MASK}" for k, _ in pairs) if pairs else MASK
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_match(m: re.Match) -> str:
    url = m.group(0)
    core = url.rstrip(".,:;!?)]}")  # punctuation after a URL in a sentence is not part of it
    return redact_url(core) + url[len(core) :]


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`)."""
    return _URL.sub(_redact_match, text) if "://" in text else text


def redact_tree(obj: Any) -> Any:
    """A JSON-like value with every string in it redacted (:func:`redact_text`)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_tree(v) for v in obj]
    return obj
