"""The two prompts of the LLM-guided round, rendered from the template files in ``prompts/``.

``questions.{system,user}.txt`` (question generation) and ``update.{system,user}.txt``
(query update) are ``string.Template`` files: ``$input`` is replaced by the round's inputs
as one JSON object after the line ``INPUT JSON:`` (so a backend, LLM or rules, reads them
unambiguously), ``$min_questions`` / ``$max_questions`` / ``$max_options`` by the limits.

What each prompt may contain is fixed here: the question writer gets the original query,
the stored captions of the positive and negative samples shown this round and the earlier
questions with the user's answers -- never the target's identity, ranks or scores; the
query update also gets the current query and this round's questions and answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from benchmark.feedback.llm.base import Message

INPUT_MARKER = "INPUT JSON:"
TASK_QUESTIONS, TASK_UPDATE = "questions", "update"


@cache
def template(name: str) -> Template:
    """The template file ``prompts/<name>.txt`` shipped with the package."""
    ref = resources.files("benchmark.feedback") / "prompts" / f"{name}.txt"
    return Template(ref.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Limits:
    min_questions: int = 2
    max_questions: int = 3
    max_options: int = 6


def _messages(task: str, payload: dict[str, Any], limits: Limits) -> list[Message]:
    fields = {
        "input": json.dumps({"task": task, **payload}, ensure_ascii=False, indent=1),
        "min_questions": limits.min_questions,
        "max_questions": limits.max_questions,
        "max_options": limits.max_options,
    }
    return [
        {"role": "system", "content": template(f"{task}.system").substitute(fields).strip()},
        {"role": "user", "content": template(f"{task}.user").substitute(fields).strip()},
    ]


def question_messages(
    query: str, positive: list[str], negative: list[str], history: list[dict], limits: Limits
) -> list[Message]:
    """Question generation: original query, PS / NS captions, earlier questions and answers."""
    payload = {"query": query, "positive_captions": positive, "negative_captions": negative, "history": history}
    return _messages(TASK_QUESTIONS, payload, limits)


def update_messages(
    query: str, current_query: str, answered: list[dict], positive: list[str], negative: list[str], limits: Limits
) -> list[Message]:
    """Query update: original and current query, this round's questions with answers, captions."""
    payload = {
        "query": query,
        "current_query": current_query,
        "answers": answered,
        "positive_captions": positive,
        "negative_captions": negative,
    }
    return _messages(TASK_UPDATE, payload, limits)


def read_input(messages: list[Message]) -> dict[str, Any]:
    """The inputs JSON of a rendered prompt (what the rules backend reads)."""
    text = messages[-1]["content"] if messages else ""
    _, marker, rest = text.rpartition(INPUT_MARKER)
    if not marker:
        raise ValueError(f"the prompt has no {INPUT_MARKER!r} line")
    data = json.loads(rest)
    if not isinstance(data, dict) or "task" not in data:
        raise ValueError("the prompt's input is not a JSON object with a 'task'")
    return data
