"""The simulated user: marks shown items, answers questions from the target.

Marking is the user model's (:mod:`benchmark.feedback.marks`, ``feedback.user.model``):
``graded`` marks a shown image close (PS), far (NS) or neither from its closeness to the
query (:mod:`benchmark.feedback.closeness`); ``binary`` marks PS = relevant, NS = the others.
Neither reads the relevance of an item that was not shown.

Answering: the user has the *target* in mind -- the image the query caption was written
for -- and knows only its ground truth: its scene graph on SynthScenes
(:class:`SceneTruth`), its reference captions on real data (:class:`CaptionTruth`). An
answer is chosen from the question and its options alone: the user never sees the
system's candidates, ranks or reformulations. The first option that the ground truth
supports is chosen (greedy); when none is supported, "none / unsure" (always offered).
With ``unsure_rate`` > 0 an answer is "none / unsure" with that probability, drawn from a
generator seeded by (seed, query, round, question), so the simulator is frozen.

SceneTruth reads an option with :mod:`benchmark.feedback.scene_text`; a bare colour under a
question about the background is read as the background's colour, and attributes the
question names (e.g. the shape in "What colour is the circle?") complete the option unless
some option names them itself. CaptionTruth supports an option when all its content words
(lower case, plural "s" dropped, stop words and question words removed) occur in the
target's captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from benchmark.feedback import scene_text
from benchmark.feedback.closeness import Closeness
from benchmark.feedback.config import UserConfig
from benchmark.feedback.marks import USER_MODELS, BinaryUser, GradedUser, Marks
from benchmark.feedback.schema import UNSURE, Question, is_unsure
from benchmark.feedback.words import content_words
from datamodules.synthetic.scene import Scene


class Truth(Protocol):
    def supports(self, question: str, option: str, options: Sequence[str]) -> bool: ...


class SceneTruth:
    """The target's SynthScenes scene graph."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def supports(self, question: str, option: str, options: Sequence[str]) -> bool:
        mention = scene_text.read(option)
        if mention.empty and scene_text.mentions_background(question):
            mention = scene_text.read(option + " background")
        if mention.empty:
            return False
        q = scene_text.read(question).object_dicts()
        named_by_options = set().union(*(scene_text.read(o).categories() for o in options))
        if len(q) == 1 and not mention.background:
            mention = mention.with_object_attributes({k: v for k, v in q[0].items() if k not in named_by_options})
        return mention.holds_in(self.scene)


class CaptionTruth:
    """The target's reference captions (real datasets)."""

    def __init__(self, captions: Sequence[str]) -> None:
        self.words = set().union(*(content_words(c) for c in captions)) if captions else set()

    def supports(self, question: str, option: str, options: Sequence[str]) -> bool:
        needed = content_words(option)
        return bool(needed) and needed <= self.words


class SimulatedUser:
    """Frozen simulated user over the gallery's ground truths (one :class:`Truth` per image)
    and a user model that marks shown items (``binary`` unless ``marker`` is given)."""

    def __init__(
        self,
        truths: Sequence[Truth],
        *,
        seed: int = 0,
        unsure_rate: float = 0.0,
        marker: BinaryUser | GradedUser | None = None,
    ) -> None:
        self.truths = list(truths)
        self.seed = seed
        self.unsure_rate = unsure_rate
        self.marker = marker or BinaryUser()

    @classmethod
    def from_config(
        cls, truths: Sequence[Truth], closeness: Closeness | None, config: UserConfig, seed: int
    ) -> SimulatedUser:
        """The user of ``feedback.user`` (``closeness``: the task's, needed by ``graded``)."""
        if config.model == GradedUser.name and closeness is None:
            raise ValueError("the graded user needs the task's closeness (scene graphs or captions)")
        marker = USER_MODELS[config.model](config, closeness, seed)
        return cls(truths, seed=seed, unsure_rate=config.unsure_rate, marker=marker)

    def mark(self, queries: Sequence[int], shown: torch.Tensor, relevant: torch.Tensor) -> Marks:
        """The marks of the ``[c, d]`` items ``shown`` to queries ``queries[c]``; ``relevant``
        (``[c, G]``) is read at the shown items only."""
        return self.marker.mark(queries, shown, relevant)

    def answer(self, target: int, question: Question, *, query: int, round_: int, index: int) -> str:
        """One of ``question.options`` for the target image ``target``."""
        if self.unsure_rate > 0:
            rng = np.random.default_rng([self.seed, query, round_, index])
            if rng.random() < self.unsure_rate:
                return UNSURE
        truth = self.truths[target]
        for option in question.options:
            if not is_unsure(option) and truth.supports(question.question, option, question.options):
                return option
        return next((o for o in question.options if is_unsure(o)), UNSURE)
