"""One LLM-guided round for one query: questions -> simulated answers -> refined query.

:meth:`Refiner.refine` renders the question-generation prompt (original query, PS / NS
captions shown, earlier questions and answers), asks the backend, parses and validates the
questions, lets the simulated user answer each (from the target's ground truth only),
renders the query-update prompt and parses the refined query. It never raises for a
backend failure: the returned :class:`Refinement` carries the failure reason (one of
:data:`~benchmark.feedback.llm.base.REASONS`) and whatever was obtained before it, and the
protocol falls back to score refreshing for that query and round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmark.feedback import prompts
from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMBackend, LLMError
from benchmark.feedback.schema import Question, parse_query, parse_questions

Answerer = Callable[[int, Question], str]  # (question index, question) -> chosen option


@dataclass
class Refinement:
    questions: list[Question] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    refined_query: str | None = None
    failure: str | None = None
    detail: str = ""

    def qa(self) -> list[dict[str, Any]]:
        return [q.to_json() | {"answer": a} for q, a in zip(self.questions, self.answers, strict=False)]


class Refiner:
    def __init__(self, backend: LLMBackend, config: LLMConfig) -> None:
        self.backend = backend
        self.config = config
        self.limits = prompts.Limits(config.min_questions, config.max_questions, config.max_options)

    def generate(self, messages) -> str:
        try:
            return self.backend.generate(messages)
        except LLMError:
            raise
        except Exception as e:
            raise LLMError("backend_error", f"{type(e).__name__}: {e}") from e

    def refine(
        self,
        query: str,
        current_query: str,
        positive: list[str],
        negative: list[str],
        history: list[dict[str, Any]],
        answer: Answerer,
    ) -> Refinement:
        out = Refinement()
        c = self.config
        try:
            text = self.generate(prompts.question_messages(query, positive, negative, history, self.limits))
            out.questions = parse_questions(
                text, min_questions=c.min_questions, max_questions=c.max_questions, max_options=c.max_options
            )
            out.answers = [answer(i, q) for i, q in enumerate(out.questions)]
            text = self.generate(
                prompts.update_messages(query, current_query, out.qa(), positive, negative, self.limits)
            )
            out.refined_query = parse_query(text, max_chars=c.max_query_chars)
        except LLMError as e:
            out.failure, out.detail = e.reason, e.detail[:300]
        return out
