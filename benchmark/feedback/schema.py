"""The structured output asked of a question writer, parsed and validated.

Question generation must return a JSON object ``{"questions": [{"question": str,
"options": [str, ...]}, ...]}`` (an optional string ``"about"`` per question is kept);
query update must return ``{"query": str}``. The first JSON object in the text is used, so
a model that wraps it in prose or a Markdown fence still parses. Validation: between
``min_questions`` and ``max_questions`` questions, each a non-empty question with 2 to
``max_options`` distinct non-empty options (the "none / unsure" option is not counted and is
appended when absent: the user always has it); a non-empty refined query of at most
``max_query_chars`` characters. Anything else raises
:class:`~benchmark.feedback.llm.base.LLMError` with reason ``invalid_output``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.llm.extract import first_json_object  # bounded nesting and time

UNSURE = "none / unsure"
_UNSURE_WORDS = re.compile(r"\b(none|unsure|not sure|don'?t know|no idea|neither|cannot tell|can'?t tell)\b")


def is_unsure(option: str) -> bool:
    """Whether an option is a "none / unsure" choice rather than a statement about the image."""
    return bool(_UNSURE_WORDS.search(option.lower()))


@dataclass(frozen=True)
class Question:
    """A single-choice clarifying question; ``options`` always ends with an unsure choice."""

    question: str
    options: tuple[str, ...]
    about: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "options": list(self.options)}
        if self.about:
            out["about"] = self.about
        return out


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LLMError("invalid_output", f"{where} must be a non-empty string, got {value!r}"[:200])
    return " ".join(value.split())


def parse_questions(
    text: str, *, min_questions: int = 2, max_questions: int = 3, max_options: int = 6
) -> list[Question]:
    data = first_json_object(text)
    raw = data.get("questions")
    if not isinstance(raw, list):
        raise LLMError("invalid_output", "field 'questions' must be a list")
    if not min_questions <= len(raw) <= max_questions:
        raise LLMError("invalid_output", f"expected {min_questions} to {max_questions} questions, got {len(raw)}")
    out = []
    for i, q in enumerate(raw):
        where = f"questions[{i}]"
        if not isinstance(q, dict):
            raise LLMError("invalid_output", f"{where} must be an object")
        question = _text(q.get("question"), f"{where}.question")
        options = q.get("options")
        if not isinstance(options, list):
            raise LLMError("invalid_output", f"{where}.options must be a list")
        opts = [_text(o, f"{where}.options[{j}]") for j, o in enumerate(options)]
        if len({o.lower() for o in opts}) != len(opts):
            raise LLMError("invalid_output", f"{where}.options has duplicates")
        real = [o for o in opts if not is_unsure(o)]
        if not 2 <= len(real) <= max_options:
            raise LLMError(
                "invalid_output", f"{where} needs 2 to {max_options} options besides 'none / unsure', got {len(real)}"
            )
        about = q.get("about", "")
        out.append(Question(question, (*real, UNSURE), about if isinstance(about, str) else ""))
    return out


def parse_query(text: str, *, max_chars: int = 400) -> str:
    query = _text(first_json_object(text).get("query"), "field 'query'")
    if len(query) > max_chars:
        raise LLMError("invalid_output", f"the refined query has {len(query)} characters, more than {max_chars}")
    return query
