"""The round loop of ``bench feedback``: every query, every arm, rankings 0..T.

Queries are processed in chunks (memory: chunk x gallery scores per arm). For a chunk,
round 0 is the model's own ranking (its ``score`` of the query encodings against the
gallery encoded once); then, for t = 0..T-1, each arm takes the user's marks on its
ranking t and produces ranking t + 1 (see :mod:`benchmark.feedback.arms`). All arms of a
run see the same queries, the same round-0 scores and the same simulated user. Ranks are
1-based, recorded per arm as ``ranks[arm][t, q]``; ``on_query`` receives one transcript
record per query as soon as its chunk is done.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.feedback.arms import ARMS, Chunk
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.ranking import ranks as rank_of
from benchmark.feedback.refine import Refiner
from benchmark.feedback.similarity import GalleryScorer
from benchmark.feedback.task import FeedbackTask
from benchmark.feedback.user import SimulatedUser
from lightning_modules.base import Encoded


@dataclass
class ProtocolResult:
    ranks: dict[str, np.ndarray]  # arm -> [T + 1, Q] int64, 1-based, 0 = no relevant item
    counts: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)

    def fallbacks(self) -> dict[str, int]:
        return {k.split("/", 1)[1]: v for k, v in sorted(self.counts.items()) if k.startswith("fallback/")}

    def marks(self) -> dict[str, dict[str, int]]:
        """``{arm: {"ps": n, "ns": n, "unsure": n, "match": n}}`` over every query and round."""
        out: dict[str, dict[str, int]] = {}
        for key, v in sorted(self.counts.items()):
            if key.startswith("marks/"):
                _, arm, kind = key.split("/")
                out.setdefault(arm, {})[kind] = int(v)
        return out


def run_protocol(
    task: FeedbackTask,
    scorer: GalleryScorer,
    queries: Encoded,
    config: FeedbackConfig,
    user: SimulatedUser,
    refiner: Refiner | None = None,
    on_query: Callable[[dict[str, Any]], None] | None = None,
) -> ProtocolResult:
    """Run every arm of ``config.arms`` over every query of ``task`` (``queries``: their encodings)."""
    if len(queries) != task.n_queries:
        raise ValueError(f"{len(queries)} query encodings for {task.n_queries} queries")
    if "llm" in config.arms and refiner is None:
        raise ValueError("the llm arm needs a Refiner")
    config.check_gallery(task.n_gallery)
    n_rounds = config.rounds + 1
    result = ProtocolResult({a: np.zeros((n_rounds, task.n_queries), dtype=np.int64) for a in config.arms})
    timings: defaultdict[str, float] = defaultdict(float)
    for start in range(0, task.n_queries, config.chunk_size):
        stop = min(start + config.chunk_size, task.n_queries)
        t0 = time.perf_counter()
        chunk = Chunk(
            start,
            stop,
            scorer.scores(queries[start:stop]),
            task.relevant_dense(start, stop),
            task,
            scorer,
            user,
            config,
            refiner,
            result.counts,
        )
        timings["round0_scores_s"] += time.perf_counter() - t0
        states = {a: ARMS[a].init(chunk) for a in config.arms}
        for t in range(n_rounds):
            for a, state in states.items():
                result.ranks[a][t, start:stop] = rank_of(state.scores, chunk.relevant, state.excluded).numpy()
            if t == config.rounds:
                break
            for a, state in states.items():
                t0 = time.perf_counter()
                ARMS[a].step(chunk, state, t)
                timings[f"arm_{a}_s"] += time.perf_counter() - t0
        if on_query is not None:
            for i, q in enumerate(chunk.queries):
                on_query(_record(task, q, {a: (result.ranks[a][:, q], states[a].log[i]) for a in config.arms}))
    result.timings = dict(timings)
    return result


def _record(task: FeedbackTask, q: int, arms: dict[str, tuple[np.ndarray, list]]) -> dict[str, Any]:
    target = int(task.targets[q])
    return {
        "query_index": q,
        "query": task.queries[q],
        "caption": task.query_captions[q],
        "target_image_id": task.image_ids[target],
        "n_relevant": int(task.relevance.indptr[q + 1] - task.relevance.indptr[q]),
        "arms": {a: {"ranks": [int(r) for r in ranks], "rounds": log} for a, (ranks, log) in arms.items()},
    }
