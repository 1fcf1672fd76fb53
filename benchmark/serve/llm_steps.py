"""The LLM-guided round in two steps, with a person answering in between.

``bench feedback``'s :meth:`~benchmark.feedback.refine.Refiner.refine` asks the questions,
lets the simulated user answer them and asks for the refined query in one call. A person
answers on the page, between two requests, so the same steps are split here: :meth:`LLMSteps.
questions` (question-generation prompt -> parsed, validated questions) and :meth:`LLMSteps.
refined_query` (query-update prompt with the answers -> parsed refined query). Both use the
refiner's own prompts, limits, parsers and error mapping (any backend failure is an
:class:`~benchmark.feedback.llm.base.LLMError` with its reason), so a round here sends the
backend exactly the messages a round of ``bench feedback`` sends for the same inputs.
"""

from __future__ import annotations

from typing import Any

from benchmark.feedback import prompts
from benchmark.feedback.refine import Refiner
from benchmark.feedback.schema import Question, parse_query, parse_questions


class LLMSteps:
    def __init__(self, refiner: Refiner) -> None:
        self.refiner = refiner

    def describe(self) -> dict[str, Any]:
        return self.refiner.backend.describe()

    def questions(
        self, query: str, positive: list[str], negative: list[str], history: list[dict[str, Any]]
    ) -> list[Question]:
        c, r = self.refiner.config, self.refiner
        text = r.generate(prompts.question_messages(query, positive, negative, history, r.limits))
        return parse_questions(
            text, min_questions=c.min_questions, max_questions=c.max_questions, max_options=c.max_options
        )

    def refined_query(
        self, query: str, current_query: str, answered: list[dict[str, Any]], positive: list[str], negative: list[str]
    ) -> str:
        r = self.refiner
        text = r.generate(prompts.update_messages(query, current_query, answered, positive, negative, r.limits))
        return parse_query(text, max_chars=r.config.max_query_chars)
