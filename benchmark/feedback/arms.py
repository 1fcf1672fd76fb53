"""The arms of the feedback protocol: how one round of marks turns into the next ranking.

Every arm keeps, per query of a chunk, a score row over the gallery and a mask of excluded
items. After ranking t (t < T) the user sees the top ``display`` items not excluded and
marks them (:mod:`benchmark.feedback.marks`: PS / NS / unsure, and which are relevant --
``match``); the arm then produces ranking t + 1:

* ``none`` -- nothing changes (no feedback).
* ``exclude`` -- shown items that are not relevant (not ``match``; with the binary user:
  the NS) are dropped; scores unchanged (elimination only).
* ``refresh`` -- score refreshing, ``s_t = w0 s_{t-1} + w_ps K(g, PS_t) - w_ns K(g, NS_t)``
  (unsure items in neither set), with a kernel K over the model's own image-image score
  (:mod:`benchmark.feedback.kernels`: mean, max, residual or the m nearest neighbours of each
  marked item); the query text is unchanged.
  The kernel reads the shown items' similarities through
  :meth:`~benchmark.feedback.similarity.GalleryScorer.shown` (whole rows or top-k
  neighbours, never a gallery x gallery matrix).
* ``llm`` -- LLM-guided refinement: questions, simulated answers, refined query q'_t,
  ``s_t = alpha score(q'_t, g) + (1 - alpha) s_{t-1}``; a round whose backend fails falls
  back to the ``refresh`` update for that query, with the reason counted.

With ``exclude_shown`` (default) the refinement arms drop the same shown items too, so they
are compared with ``exclude`` on equal terms. Each arm logs what happened per query and round
for the transcript.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.feedback.config import FeedbackConfig, RefreshConfig
from benchmark.feedback.kernels import KERNELS, SIMILARITY, DenseShown, Shown
from benchmark.feedback.marks import Marks
from benchmark.feedback.ranking import top_shown
from benchmark.feedback.refine import Refiner
from benchmark.feedback.schema import Question
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.task import FeedbackTask
from benchmark.feedback.user import SimulatedUser


@dataclass
class Chunk:
    """One chunk of queries ``[start, stop)`` and everything the arms use."""

    start: int
    stop: int
    s0: torch.Tensor  # [c, G] round-0 scores
    relevant: torch.Tensor  # [c, G] bool
    task: FeedbackTask
    scorer: GalleryScorer
    user: SimulatedUser
    config: FeedbackConfig
    refiner: Refiner | None = None
    counts: Counter = field(default_factory=Counter)  # "llm_rounds", "fallback/<reason>", "marks/<arm>/<mark>"

    @property
    def queries(self) -> range:
        return range(self.start, self.stop)


@dataclass
class ArmState:
    scores: torch.Tensor
    excluded: torch.Tensor
    log: list[list[dict[str, Any]]]  # per query, per round
    current: list[str] = field(default_factory=list)  # llm: the current query text
    history: list[list[dict[str, Any]]] = field(default_factory=list)  # llm: questions and answers so far


def _spread(x: torch.Tensor) -> torch.Tensor:
    """Per-row standard deviation over the gallery (finite entries; 1 where it is 0)."""
    finite = torch.isfinite(x)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    z = torch.where(finite, x, torch.zeros_like(x))
    mean = z.sum(1, keepdim=True) / n
    var = torch.where(finite, (z - mean) ** 2, torch.zeros_like(x)).sum(1, keepdim=True) / n
    std = var.sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))


def refreshed(
    prev: torch.Tensor, sims: torch.Tensor | Shown, ps: torch.Tensor, w: RefreshConfig, ns: torch.Tensor | None = None
) -> torch.Tensor:
    """Score refreshing of ``[c, G]`` scores from the shown items' similarities (a
    :class:`~benchmark.feedback.kernels.Shown` source, or their rows ``[c, d, G]``) and
    ``[c, d]`` PS and NS marks (``ns`` None: every shown item not PS, the binary user):
    ``w0 prev + w_ps K(PS) - w_ns K(NS)`` with the kernel ``w.kernel``
    (:mod:`benchmark.feedback.kernels`); an empty PS or NS set contributes nothing. With
    ``w.scale == "std"`` a similarity term is first rescaled to the spread (std over the
    gallery) of the query's current scores, and a share term multiplied by it, so the
    weights do not depend on the model's score scale."""
    kernel = KERNELS[w.kernel]
    shown = DenseShown(sims) if isinstance(sims, torch.Tensor) else sims

    def term(mask: torch.Tensor) -> torch.Tensor:
        out = kernel.fn(shown, mask, w.neighbours, prev)
        if w.scale != "std":
            return out
        return out * _spread(prev) / (_spread(out) if kernel.unit == SIMILARITY else 1.0)

    return w.w0 * prev + w.w_ps * term(ps) - w.w_ns * term(~ps if ns is None else ns)


class Arm:
    """Base: show, mark, log, update, exclude."""

    name = ""
    #: whether the user's feedback is used at all (the ``none`` arm shows nothing)
    uses_feedback = True

    def excludes(self, config: FeedbackConfig) -> bool:
        return config.exclude_shown

    def init(self, chunk: Chunk) -> ArmState:
        c = chunk.stop - chunk.start
        return ArmState(chunk.s0.clone(), torch.zeros_like(chunk.relevant), [[] for _ in range(c)])

    def step(self, chunk: Chunk, state: ArmState, t: int) -> None:
        """Feedback on ranking ``t`` -> ranking ``t + 1``."""
        if not self.uses_feedback:
            return
        shown = top_shown(state.scores, state.excluded, chunk.config.display)
        marks = chunk.user.mark(chunk.queries, shown, chunk.relevant)
        self.log(chunk, state, shown, marks, t)
        self.update(chunk, state, shown, marks, t)
        if self.excludes(chunk.config):
            rows = torch.arange(len(shown))[:, None].expand_as(shown)
            state.excluded[rows[~marks.match], shown[~marks.match]] = True

    def log(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks: Marks, t: int) -> None:
        """The round's transcript entry per query (graded marks add ``unsure`` and each shown
        item's ``closeness``) and the arm's mark counts."""
        ids = chunk.task.image_ids
        for kind, mask in (("ps", marks.ps), ("ns", marks.ns), ("unsure", marks.unsure), ("match", marks.match)):
            chunk.counts[f"marks/{self.name}/{kind}"] += int(mask.sum())
        for i in range(len(shown)):
            row = shown[i].tolist()
            entry = {
                "round": t + 1,
                "shown": [ids[g] for g in row],
                "ps": [ids[g] for g, m in zip(row, marks.ps[i].tolist(), strict=True) if m],
                "ns": [ids[g] for g, m in zip(row, marks.ns[i].tolist(), strict=True) if m],
            }
            if marks.closeness is not None:
                entry["unsure"] = [ids[g] for g, m in zip(row, marks.unsure[i].tolist(), strict=True) if m]
                entry["closeness"] = [None if c != c else round(c, 4) for c in marks.closeness[i].tolist()]
            state.log[i].append(entry)

    def update(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks: Marks, t: int) -> None:
        pass


class NoFeedback(Arm):
    name = "none"
    uses_feedback = False


class ExcludeShown(Arm):
    name = "exclude"

    def excludes(self, config: FeedbackConfig) -> bool:
        return True


class ScoreRefresh(Arm):
    name = "refresh"

    def update(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks: Marks, t: int) -> None:
        state.scores = refreshed(state.scores, chunk.scorer.shown(shown), marks.ps, chunk.config.refresh, marks.ns)


class LLMGuided(Arm):
    name = "llm"

    def init(self, chunk: Chunk) -> ArmState:
        state = super().init(chunk)
        state.current = [chunk.task.queries[q] for q in chunk.queries]
        state.history = [[] for _ in chunk.queries]
        return state

    def update(self, chunk: Chunk, state: ArmState, shown: torch.Tensor, marks: Marks, t: int) -> None:
        if chunk.refiner is None:
            raise RuntimeError("the llm arm needs a Refiner")
        task, user, caps = chunk.task, chunk.user, chunk.task.gallery_captions
        ok, texts, failed = [], [], []
        for i, q in enumerate(chunk.queries):
            row = shown[i].tolist()
            target = int(task.targets[q])

            def answer(k: int, question: Question, q: int = q, target: int = target) -> str:
                return user.answer(target, question, query=q, round_=t + 1, index=k)

            r = chunk.refiner.refine(
                task.queries[q],
                state.current[i],
                [caps[g] for g, m in zip(row, marks.ps[i].tolist(), strict=True) if m],
                [caps[g] for g, m in zip(row, marks.ns[i].tolist(), strict=True) if m],
                state.history[i],
                answer,
            )
            chunk.counts["llm_rounds"] += 1
            state.history[i].extend(r.qa())
            state.log[i][-1].update(
                questions=r.qa(),
                refined_query=r.refined_query,
                fallback=r.failure,
                **({"detail": r.detail} if r.detail else {}),
            )
            if r.failure is None:
                assert r.refined_query is not None  # Refiner.refine sets it whenever it does not fail
                ok.append(i)
                texts.append(r.refined_query)
                state.current[i] = r.refined_query
            else:
                chunk.counts[f"fallback/{r.failure}"] += 1
                failed.append(i)
        alpha = chunk.config.llm.alpha
        if ok:
            idx = torch.tensor(ok)
            state.scores[idx] = alpha * chunk.scorer.text_scores(texts) + (1 - alpha) * state.scores[idx]
        if failed:
            idx = torch.tensor(failed)
            state.scores[idx] = refreshed(
                state.scores[idx], chunk.scorer.shown(shown[idx]), marks.ps[idx], chunk.config.refresh, marks.ns[idx]
            )


#: arm name -> implementation (every name of ``config.ARM_NAMES``)
ARMS: dict[str, Arm] = {a.name: a for a in (NoFeedback(), ExcludeShown(), ScoreRefresh(), LLMGuided())}
