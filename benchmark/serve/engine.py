"""Search, score refreshing and LLM-guided refinement over one encoded gallery.

:class:`Searcher` ranks the gallery for a typed instruction with the model's own score
(:class:`~benchmark.feedback.similarity.GalleryScorer`, the scorer of ``bench feedback``) and
runs the rounds a person asks for on the items shown:

* **refresh** -- the ``refresh`` arm's update (:func:`benchmark.feedback.arms.refreshed`):
  ``s = w0 s + w_ps K(PS) - w_ns K(NS)`` with the configured kernel and weights
  (``--feedback-set refresh.*``); items marked relevant are PS, not relevant NS, unmarked
  ones neither (unsure); only the marked items' image-image rows are scored (the same
  update: see :meth:`Searcher._refresh_scores`);
* **llm** -- the ``llm`` arm's update in two steps (:mod:`.llm_steps`): questions are shown,
  the person answers, the refined query q' is scored and mixed in, ``s = alpha score(q') +
  (1 - alpha) s``; when the question writer fails (the rules writer finds nothing to ask, a
  server is down) the round falls back to the refresh update, with the reason shown and
  recorded, as in ``bench feedback``.

With ``feedback.exclude_shown`` (default) items marked not relevant are dropped from later
rankings. Unlike the simulated protocol, unmarked items are kept: a person who did not mark
an item has not said it is wrong. The shown items are the top ``top_k`` not dropped
(:func:`benchmark.feedback.ranking.top_shown`, ties lowest index first). Every failure a
person can cause is a :class:`SearchError` with a message for the page.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.llm.base import LLMError
from benchmark.feedback.ranking import top_shown
from benchmark.feedback.similarity import GalleryScorer, score_function
from benchmark.serve.config import MAX_QUERY_CHARS
from benchmark.serve.gallery import Gallery
from benchmark.serve.llm_steps import LLMSteps
from benchmark.serve.search import PendingQuestions, Search


class SearchError(ValueError):
    """Bad input from the page: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Searcher:
    """The searches of one server over one gallery (the ``max_searches`` most recent kept)."""

    def __init__(
        self,
        model: Any,
        gallery: Gallery,
        fb: FeedbackConfig,
        steps: LLMSteps | None,
        *,
        top_k: int = 8,
        max_searches: int = 1000,
    ) -> None:
        sim = fb.image_similarity()
        self.gallery, self.fb, self.steps = gallery, fb, steps
        self.top_k = min(top_k, len(gallery))
        self.max_searches = max_searches
        self.scorer = GalleryScorer(
            model,
            gallery.encoded,
            score_function(model, fb.score_variant),
            batch_size=fb.chunk_size,
            row_chunk=sim["row_chunk"],
            top_k=sim["top_k"],
            row_cache_mb=fb.similarity.row_cache_mb,
        )
        self.searches: OrderedDict[int, Search] = OrderedDict()
        self._next = 0

    # -- searches ----------------------------------------------------------------------
    def _score_text(self, text: str) -> tuple[torch.Tensor, int | None]:
        enc = self.scorer.encode_texts([text])
        length = None if enc.lengths is None else int(enc.lengths[0])
        return self.scorer.scores(enc)[0], length

    def search(self, text: str) -> Search:
        query = " ".join(str(text).split())
        if not query:
            raise SearchError("type an instruction to search for (the query is empty)")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are accepted")
        scores, length = self._score_text(query)
        s = Search(self._next, query, query, scores, torch.zeros(len(scores), dtype=torch.bool), length)
        self._next += 1
        self._show(s)
        self.searches[s.index] = s
        while len(self.searches) > self.max_searches:
            self.searches.popitem(last=False)
        return s

    def get(self, index: int) -> Search:
        if index not in self.searches:
            raise SearchError(f"no search {index} on this server (searches are kept in memory only)", 404)
        return self.searches[index]

    def _show(self, s: Search) -> None:
        s.shown = top_shown(s.scores[None], s.excluded[None], self.top_k)[0].tolist()

    def _marks(self, s: Search, relevant: Sequence[int], not_relevant: Sequence[int]) -> tuple[list[int], list[int]]:
        ps, ns = list(dict.fromkeys(int(i) for i in relevant)), list(dict.fromkeys(int(i) for i in not_relevant))
        stray = [i for i in ps + ns if i not in s.shown]
        if stray:
            raise SearchError(f"only the results shown can be marked; item(s) {stray[:5]} are not shown now")
        both = set(ps) & set(ns)
        if both:
            raise SearchError(f"item(s) {sorted(both)[:5]} are marked both relevant and not relevant")
        return ps, ns

    def _round(self, s: Search, kind: str, ps: list[int], ns: list[int], **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "round": len(s.rounds) + 1,
            "kind": kind,
            "shown": list(s.shown),
            "shown_scores": [round(float(s.scores[g]), 6) for g in s.shown],
            "ps": ps,
            "ns": ns,
            "unsure": [g for g in s.shown if g not in ps and g not in ns],
            "query_length": s.query_length,  # of the query text the round's ranking came from
        }
        entry.update(extra)
        s.rounds.append(entry)
        return entry

    def _refresh_scores(self, s: Search, ps: list[int], ns: list[int]) -> None:
        """The refresh update from the marked items only: every kernel reads a shown item's
        image-image row only through the PS / NS masks (an unmarked item's row is masked out of
        ``mean``, ``max``, ``knn`` and ``residual`` alike), so leaving the unmarked rows out
        gives the update over all shown items while scoring only the marked ones against the
        gallery. No mark: both terms are empty, ``s = w0 s``."""
        marked = [g for g in s.shown if g in ps or g in ns]
        if not marked:
            s.scores = self.fb.refresh.w0 * s.scores
            return
        shown = torch.tensor([marked], dtype=torch.long)
        ps_mask = torch.tensor([[g in ps for g in marked]])
        ns_mask = torch.tensor([[g in ns for g in marked]])
        s.scores = refreshed(s.scores[None], self.scorer.shown(shown), ps_mask, self.fb.refresh, ns_mask)[0]

    def _finish(self, s: Search, ns: list[int]) -> None:
        if self.fb.exclude_shown and ns:
            s.excluded[torch.tensor(ns, dtype=torch.long)] = True
        s.pending = None
        self._show(s)

    # -- rounds ------------------------------------------------------------------------
    def refresh(self, index: int, relevant: Sequence[int], not_relevant: Sequence[int]) -> Search:
        s = self.get(index)
        ps, ns = self._marks(s, relevant, not_relevant)
        self._round(s, "refresh", ps, ns)
        self._refresh_scores(s, ps, ns)
        self._finish(s, ns)
        return s

    def _steps(self) -> LLMSteps:
        if self.steps is None:
            raise SearchError("this server has no question writer (start it with --llm rules or another backend)")
        return self.steps

    def ask(self, index: int, relevant: Sequence[int], not_relevant: Sequence[int]) -> Search:
        """Step 1 of an LLM-guided round: the questions (``s.pending``); on a writer failure
        the round is done as a refresh round (``s.rounds[-1]["fallback"]`` says why)."""
        steps, s = self._steps(), self.get(index)
        ps, ns = self._marks(s, relevant, not_relevant)
        caps = self.gallery.captions
        try:
            questions = steps.questions(s.query, [caps[g] for g in ps], [caps[g] for g in ns], s.history)
        except LLMError as e:
            self._fallback(s, ps, ns, e, [])
            return s
        s.pending = PendingQuestions(questions, ps, ns, list(s.shown))
        return s

    def answer(self, index: int, answers: Sequence[str]) -> Search:
        """Step 2: the answers -> the refined query, scored and mixed into the ranking."""
        steps, s = self._steps(), self.get(index)
        p = s.pending
        if p is None:
            raise SearchError("no questions are waiting for answers in this search (ask for an LLM round first)", 409)
        if len(answers) != len(p.questions):
            raise SearchError(f"expected {len(p.questions)} answers, got {len(answers)}")
        for k, (q, a) in enumerate(zip(p.questions, answers, strict=True)):
            if a not in q.options:
                raise SearchError(f"answer {k + 1} must be one of the question's options, got {str(a)[:80]!r}")
        qa = [q.to_json() | {"answer": a} for q, a in zip(p.questions, answers, strict=True)]
        caps = self.gallery.captions
        try:
            refined = steps.refined_query(
                s.query, s.current_query, qa, [caps[g] for g in p.ps], [caps[g] for g in p.ns]
            )
        except LLMError as e:
            self._fallback(s, p.ps, p.ns, e, qa)
            return s
        new, length = self._score_text(refined)
        self._round(
            s, "llm", p.ps, p.ns, questions=qa, refined_query=refined, refined_query_length=length, fallback=None
        )
        s.history.extend(qa)
        alpha = self.fb.llm.alpha
        s.scores = alpha * new + (1 - alpha) * s.scores
        s.current_query, s.query_length = refined, length
        self._finish(s, p.ns)
        return s

    def _fallback(self, s: Search, ps: list[int], ns: list[int], e: LLMError, qa: list[dict[str, Any]]) -> None:
        extra: dict[str, Any] = {"questions": qa, "refined_query": None, "fallback": e.reason}
        if e.detail:
            extra["detail"] = e.detail
        self._round(s, "llm", ps, ns, **extra)
        s.history.extend(qa)
        self._refresh_scores(s, ps, ns)
        self._finish(s, ns)
