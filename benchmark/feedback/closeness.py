"""How close a shown image is to what the query asks for: the graded simulated user's judgement.

A closeness is a number in [0, 1], computed from what a person would see -- the shown image
and the query -- and nothing else (never a relevance label):

* ``constraint_share`` (SynthScenes, when every query caption carries its structured
  constraints and every gallery image its scene graph): the share of the query's atomic
  constraints that the shown image's scene satisfies. The atoms are those of
  :meth:`~datamodules.synthetic.constraints.CaptionConstraints.n_atoms`: each named
  attribute of each object (shape, colour, size, row, column -- so an object type "a red
  circle" is two atoms), each relation between two named objects, each named background
  attribute (pattern, colour). Object constraints are matched to distinct scene objects (or
  to none); the share is that of the best such assignment (most atoms satisfied; a relation
  counts when both its objects are assigned and the relation holds between their cells).
  Closeness 1 is exactly the dataset's relevance
  (:meth:`~datamodules.synthetic.constraints.CaptionConstraints.satisfied_by`).
* ``caption_overlap`` (real datasets): the share of the query caption's content words
  (lower case, plural "s" dropped, stop words removed: :func:`~benchmark.feedback.words.content_words`,
  the reading of :class:`~benchmark.feedback.user.CaptionTruth`) that occur in the shown image's reference
  captions -- the captions stand in for what a person sees in the image. A caption without
  content words has no closeness (NaN: the user is unsure). Captions only approximate an
  image: a word missing from five captions may well be in the picture.

Every value is computed once per (query, image) pair and cached: the arms of a run show
the same images again.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from typing import Protocol

from benchmark.feedback.words import content_words
from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.scene import Scene

CONSTRAINT_SHARE = "constraint_share"
CAPTION_OVERLAP = "caption_overlap"


class Closeness(Protocol):
    #: which closeness this is (recorded in the result file)
    kind: str

    def __call__(self, query: int, image: int) -> float:
        """Closeness of gallery image ``image`` to query ``query``, in [0, 1] (NaN: unknown)."""
        ...


def constraint_share(constraints: CaptionConstraints, scene: Scene) -> float:
    """The share of the caption's atoms the scene satisfies (best assignment of objects)."""
    total = constraints.n_atoms()
    bg = sum(getattr(scene.background, k) == v for k, v in constraints.background.attributes().items())
    objs = scene.objects
    # fits[c][o]: atoms of object constraint c that scene object o satisfies
    fits = [[sum(getattr(o, k) == v for k, v in c.items) for o in objs] for c in constraints.objects]
    n_c, n_o = len(constraints.objects), len(objs)
    # None: the constraint is left unmatched. Matching every constraint to a distinct object
    # (every object, when there are fewer) is never worse: fits are >= 0 and a relation only adds.
    slots: list[int | None] = [*range(n_o), *([None] * max(0, n_c - n_o))]
    best = 0
    for assignment in set(permutations(slots, n_c)):
        got = sum(fits[c][o] for c, o in enumerate(assignment) if o is not None)
        for r in constraints.relations:
            a, b = assignment[r.subject], assignment[r.object]
            got += a is not None and b is not None and r.holds(objs[a], objs[b])
        best = max(best, got)
    return (best + bg) / total


class SceneCloseness:
    """``constraint_share`` of each query's caption constraints against the gallery's scenes."""

    kind = CONSTRAINT_SHARE

    def __init__(self, constraints: Sequence[CaptionConstraints], scenes: Sequence[Scene]) -> None:
        self.constraints = tuple(constraints)
        self.scenes = tuple(scenes)
        self._cache: dict[tuple[int, int], float] = {}

    def __call__(self, query: int, image: int) -> float:
        key = (query, image)
        if key not in self._cache:
            self._cache[key] = constraint_share(self.constraints[query], self.scenes[image])
        return self._cache[key]


class CaptionOverlap:
    """``caption_overlap`` of each query caption's content words with the images' captions."""

    kind = CAPTION_OVERLAP

    def __init__(self, query_captions: Sequence[str], image_words: Sequence[set[str]]) -> None:
        self.wanted = tuple(frozenset(content_words(c)) for c in query_captions)
        self.image_words = tuple(image_words)

    def __call__(self, query: int, image: int) -> float:
        wanted = self.wanted[query]
        if not wanted:
            return float("nan")
        return len(wanted & self.image_words[image]) / len(wanted)
