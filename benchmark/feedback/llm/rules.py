"""``--llm rules``: the deterministic attribute-contrast question writer. Not an LLM.

It honours the same interface as the LLM backends (chat messages in, JSON text out): it
reads the inputs JSON that every prompt carries after ``INPUT JSON:`` and answers with
:mod:`.contrast`. Outputs and result files label it "rules (not an LLM)". It is the
default on the embedded benchmark, where no LLM weights exist; on real datasets it reads
only the SynthScenes vocabulary, so it rarely finds anything to ask (those rounds fall
back to score refreshing, counted as ``invalid_output``).
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
    def __init__(self, max_questions: int = 3, max_options: int = 6) -> None:
        self.max_questions, self.max_options = max_questions, max_options

    @classmethod
    def from_spec(cls, spec: str, config: LLMConfig) -> RulesBackend:
        return cls(config.max_questions, config.max_options)

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
        return json.dumps(tasks[data["task"]](data))
