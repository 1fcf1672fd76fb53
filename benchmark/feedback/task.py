"""What the feedback protocol runs on: queries, gallery, relevance, captions, ground truths.

:class:`FeedbackTask` is built from an :class:`~datamodules.base.EvalSet` (text-to-image):
the queries are its instructions, each with its *target* (the image its caption was
written for) and its exact relevance row; every gallery image is described to the
question writer by one of its stored captions (``longest``, or ``first``); the simulated
user's ground truth per image is its scene graph when the dataset records one (SynthScenes:
``ImageRecord.metadata["scene"]``), else its reference captions. The graded user's closeness
(:mod:`benchmark.feedback.closeness`) follows: ``constraint_share`` of each query caption's
structured constraints (``CaptionRecord.constraints``) against the scene graphs when both are
recorded for every query and image, else ``caption_overlap`` with the reference captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.feedback.closeness import CaptionOverlap, Closeness, SceneCloseness
from benchmark.feedback.user import CaptionTruth, SceneTruth, Truth
from datamodules.base import EvalSet, ImageRecord, Relevance
from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.scene import Scene


@dataclass(frozen=True)
class FeedbackTask:
    queries: tuple[str, ...]
    query_captions: tuple[str, ...]
    targets: np.ndarray  # per query: gallery index of its source image
    relevance: Relevance  # queries x gallery
    image_ids: tuple[str, ...]
    gallery_captions: tuple[str, ...]
    truths: tuple[Truth, ...]
    truth_kind: str  # "scene_graph" or "reference_captions"
    closeness: Closeness | None = None  # the graded user's (query, image) closeness

    def __post_init__(self) -> None:
        n_q, n_g = len(self.queries), len(self.image_ids)
        if (self.relevance.n_queries, self.relevance.n_gallery) != (n_q, n_g):
            raise ValueError(
                f"relevance is {self.relevance.n_queries} x {self.relevance.n_gallery}, expected {n_q} x {n_g}"
            )
        if len(self.targets) != n_q or len(self.query_captions) != n_q:
            raise ValueError("one target and one caption per query expected")
        if len(self.gallery_captions) != n_g or len(self.truths) != n_g:
            raise ValueError("one caption and one ground truth per gallery image expected")

    @property
    def n_queries(self) -> int:
        return len(self.queries)

    @property
    def n_gallery(self) -> int:
        return len(self.image_ids)

    def relevant_dense(self, start: int, stop: int) -> torch.Tensor:
        """``[stop - start, G]`` boolean relevance of queries ``[start, stop)``."""
        out = torch.zeros(stop - start, self.n_gallery, dtype=torch.bool)
        for i in range(start, stop):
            out[i - start, torch.from_numpy(self.relevance.row(i))] = True
        return out

    def limited(self, n: int | None) -> FeedbackTask:
        """The first ``n`` queries (all when ``n`` is None or larger)."""
        if n is None or n >= self.n_queries:
            return self
        rel = Relevance(
            self.relevance.indptr[: n + 1].copy(),
            self.relevance.indices[: self.relevance.indptr[n]].copy(),
            self.n_gallery,
        )
        return FeedbackTask(
            self.queries[:n],
            self.query_captions[:n],
            self.targets[:n],
            rel,
            self.image_ids,
            self.gallery_captions,
            self.truths,
            self.truth_kind,
            self.closeness,
        )


def _gallery_captions(es: EvalSet, choice: str) -> list[str]:
    by_image: list[list[tuple[int, int, str]]] = [[] for _ in range(es.n_images)]
    for q, (img, text) in enumerate(zip(es.source, es.captions, strict=True)):
        by_image[int(img)].append((int(es.complexity[q]), q, text))
    pick = {"longest": lambda cs: max(cs, key=lambda c: (c[0], len(c[2]), -c[1]))[2], "first": lambda cs: cs[0][2]}[
        choice
    ]
    return [pick(cs) if cs else "" for cs in by_image]


def _query_constraints(es: EvalSet, records: Sequence[ImageRecord]) -> list[CaptionConstraints] | None:
    """Each query's caption constraints, in query order (the order of ``build_eval_set``:
    records, then each record's captions); None unless every caption records them."""
    caps = [c for r in records for c in r.captions]
    if len(caps) != es.n_queries or any(c.constraints is None for c in caps):
        return None
    if any(c.text != text for c, text in zip(caps, es.captions, strict=True)):
        return None
    return [CaptionConstraints.from_json(c.constraints) for c in caps if c.constraints is not None]  # all set


def from_eval_set(
    es: EvalSet, records: Sequence[ImageRecord] | None = None, *, gallery_caption: str = "longest"
) -> FeedbackTask:
    """The t2i task of an evaluation set; ``records`` (in gallery order) give scene graphs
    and caption constraints."""
    scenes = None
    if records is not None and len(records) == es.n_images and all("scene" in r.metadata for r in records):
        scenes = [Scene.from_json(r.metadata["scene"]) for r in records]
    own: list[list[str]] = [[] for _ in range(es.n_images)]
    for img, text in zip(es.source, es.captions, strict=True):
        own[int(img)].append(text)
    caption_truths = [CaptionTruth(cs) for cs in own]
    constraints = _query_constraints(es, records) if scenes is not None and records is not None else None
    closeness: Closeness = (
        SceneCloseness(constraints, scenes)
        if scenes is not None and constraints is not None
        else CaptionOverlap(es.captions, [t.words for t in caption_truths])
    )
    if scenes is not None:
        truths: list[Truth] = [SceneTruth(s) for s in scenes]
        kind = "scene_graph"
    else:
        truths = list(caption_truths)
        kind = "reference_captions"
    return FeedbackTask(
        es.instructions,
        es.captions,
        np.asarray(es.source, dtype=np.int64),
        es.relevance["t2i"],
        es.image_ids,
        tuple(_gallery_captions(es, gallery_caption)),
        tuple(truths),
        kind,
        closeness,
    )
