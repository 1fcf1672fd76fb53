"""``--llm rules``: the deterministic attribute-contrast question writer. Not an LLM.

It honours the same interface as the LLM backends (chat messages in, JSON text out): it
reads the inputs JSON that every prompt carries after ``INPUT JSON:`` and answers with
:mod:`.contrast`. Outputs and result files label it "rules (not an LLM)". It is the
default on the embedded benchmark, where no LLM weights exist; on real datasets it reads
only the SynthScenes vocabulary, so it rarely finds anything to ask. A round with fewer
attribute contrasts than ``min_questions`` falls back to score refreshing, counted as
``nothing_to_ask`` (not as an LLM's ``invalid_output``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from benchmark.feedback.config import LLMConfig
from benchmark.feedback.llm.base import LLMError, Message
from benchmark.feedback.llm.contrast import update_query, write_questions
from benchmark.feedback.prompts import TASK_QUESTIONS, TASK_UPDATE, read_input

LABEL = "rules (deterministic attribute-contrast question writer; not an LLM)"


class RulesBackend:
    def __init__(self, max_questions: int = 3, max_options: int = 6, min_questions: int = 2) -> None:
        self.max_questions, self.max_options, self.min_questions = max_questions, max_options, min_questions

    @classmethod
    def from_spec(cls, spec: str, config: LLMConfig) -> RulesBackend:
        return cls(config.max_questions, config.max_options, config.min_questions)

    def describe(self) -> dict[str, Any]:
        return {"spec": "rules", "label": LABEL, "is_llm": False}

    def generate(self, messages: Sequence[Message]) -> str:
        try:
            data = read_input(list(messages))
        except ValueError as e:
            raise LLMError("backend_error", f"rules: cannot read the prompt's inputs ({e})") from None
        tasks = {
            TASK_QUESTIONS: lambda d: write_questions(d, self.max_questions, self.max_options),
            TASK_UPDATE: update_query,
        }
        if data["task"] not in tasks:
            raise LLMError("backend_error", f"rules: unknown task {data['task']!r}")
        out = tasks[data["task"]](data)
        if data["task"] == TASK_QUESTIONS and len(out["questions"]) < self.min_questions:
            raise LLMError(
                "nothing_to_ask",
                f"rules: {len(out['questions'])} attribute contrast(s) among the shown images, "
                f"min_questions is {self.min_questions}",
            )
        return json.dumps(out)
