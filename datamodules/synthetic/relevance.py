"""Exact relevance over one split of SynthScenes, computed fast.

Text-to-image: an image is relevant to a caption when its scene satisfies every constraint
of the caption (:meth:`CaptionConstraints.satisfied_by`). Rather than testing every
caption against every scene, an inverted index maps each attribute value (and each
(colour, shape) type, and each background attribute) to the scenes that hold it; the
candidates of a caption are the intersection of its postings, and only those are checked
exactly. Equal constraints (same canonical key) are evaluated once.

Image-to-image: two images are relevant to each other when their scenes hold the same
set of (colour, shape) object types; size, position, object multiplicity and background
are ignored. An image is never listed as relevant to itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.scene import Scene
from datamodules.synthetic.vocabulary import OBJECT_ATTRIBUTES


def _object_keys(attributes: dict[str, str]) -> list[Hashable]:
    keys: list[Hashable] = [("object", name, value) for name, value in attributes.items()]
    if "colour" in attributes and "shape" in attributes:
        keys.append(("kind", attributes["colour"], attributes["shape"]))
    return keys


class SceneIndex:
    """Inverted index over the scenes of one split."""

    def __init__(self, scenes: Sequence[Scene]) -> None:
        self.scenes = list(scenes)
        self.postings: dict[Hashable, set[int]] = defaultdict(set)
        for i, scene in enumerate(self.scenes):
            for obj in scene.objects:
                for key in _object_keys({name: getattr(obj, name) for name in OBJECT_ATTRIBUTES}):
                    self.postings[key].add(i)
            for name, value in scene.background.to_json().items():
                self.postings[("background", name, value)].add(i)

    def candidates(self, constraints: CaptionConstraints) -> set[int]:
        """Scenes that hold every attribute value the caption names (a superset of the answer)."""
        keys: list[Hashable] = [k for o in constraints.objects for k in _object_keys(o.attributes())]
        keys += [("background", name, value) for name, value in constraints.background.attributes().items()]
        sets = sorted((self.postings.get(k, set()) for k in keys), key=len)
        if not sets:
            return set(range(len(self.scenes)))
        found = set(sets[0])
        for s in sets[1:]:
            if not found:
                break
            found &= s
        return found

    def relevant(self, constraints: CaptionConstraints) -> list[int]:
        """Sorted indices of every scene that satisfies ``constraints``."""
        return sorted(i for i in self.candidates(constraints) if constraints.satisfied_by(self.scenes[i]))


def caption_relevance(scenes: Sequence[Scene], captions: Sequence[CaptionConstraints]) -> list[list[int]]:
    """For each caption, the sorted indices of the scenes that satisfy it."""
    index = SceneIndex(scenes)
    cache: dict[str, list[int]] = {}
    out = []
    for c in captions:
        key = c.key()
        if key not in cache:
            cache[key] = index.relevant(c)
        out.append(cache[key])
    return out


def image_relevance(scenes: Sequence[Scene]) -> list[list[int]]:
    """For each scene, the sorted indices of the *other* scenes with the same set of types."""
    groups: dict[frozenset, list[int]] = defaultdict(list)
    for i, scene in enumerate(scenes):
        groups[scene.kinds].append(i)
    return [[j for j in groups[scene.kinds] if j != i] for i, scene in enumerate(scenes)]
