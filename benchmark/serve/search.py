"""One search and its history: the scores, what was shown and marked each round, and its
transcript line.

A :class:`Search` holds the query as typed, the query text now in use (the LLM-guided round
replaces it), the current score row over the gallery, the items dropped by exclusion, the
items shown last, the query length L the model allotted (IDQ-Former's QScaler; None for
models with a fixed query) and the rounds so far. :meth:`Search.transcript_line` writes it in
``bench feedback``'s transcript schema (:mod:`benchmark.feedback.transcript`): one object with
``query_index``, ``query``, ``caption``, ``target_image_id``, ``n_relevant`` and ``arms`` --
here the one arm ``interactive``, whose ``rounds`` hold ``round``, ``shown``, ``ps``, ``ns``
(image ids; ``unsure``: shown and left unmarked) and, for an LLM-guided round, ``questions``
(question, options, answer), ``refined_query`` and ``fallback``. A person judges the results,
so there is no ground truth: ``caption``, ``target_image_id`` and ``n_relevant`` are null and
``ranks`` is empty. Beyond the schema, the line records ``query_length`` (L of the typed
query) and each round its ``kind`` (``refresh`` or ``llm``), the shown items' scores
(``shown_scores``), the ``query_length`` its ranking came from and, for a refined query, its
``refined_query_length``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.feedback.schema import Question

ARM = "interactive"


@dataclass
class PendingQuestions:
    """An LLM-guided round between its two steps: the questions asked, awaiting answers."""

    questions: list[Question]
    ps: list[int]
    ns: list[int]
    shown: list[int]


@dataclass
class Search:
    index: int
    query: str
    current_query: str
    scores: torch.Tensor  # [G] float32
    excluded: torch.Tensor  # [G] bool
    query_length: int | None  # L of the query text in use (None: the model's queries have a fixed length)
    shown: list[int] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # questions and answers so far (the refiner's)
    pending: PendingQuestions | None = None

    def transcript_line(self, image_ids: tuple[str, ...]) -> dict[str, Any]:
        rounds = [
            {k: ([image_ids[g] for g in v] if k in ("shown", "ps", "ns", "unsure") else v) for k, v in r.items()}
            for r in self.rounds
        ]
        return {
            "query_index": self.index,
            "query": self.query,
            "caption": None,
            "target_image_id": None,
            "n_relevant": None,
            "query_length": self.rounds[0].get("query_length", self.query_length) if self.rounds else self.query_length,
            "arms": {ARM: {"ranks": [], "rounds": rounds}},
        }
