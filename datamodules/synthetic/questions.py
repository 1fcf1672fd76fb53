"""SynthScenes questions for VQA (``bench run --task vqa --dataset synthetic``), from the scene graphs.

Per image, at most one question of each type, drawn from a generator seeded by (seed,
image id) -- deterministic, and independent of which other images exist -- over the
image's own scene (``datamodules/synthetic/scene.py``); answers are single words:

* ``colour``: "What colour is the {shape}?" about a shape that occurs once in the scene
  (none when every shape occurs twice or more) -> the object's colour.
* ``count``: "How many objects are there?" -> "one" .. "four".
* ``position``: about an object whose (colour, shape) occurs once: "Is the {colour}
  {shape} on the left, in the center or on the right?" -> its column, or "... at the top,
  in the middle or at the bottom?" -> its row (one of the two, drawn).
* ``presence``: "Is there a {colour} {shape}?" -> "yes" (a type of the scene) or "no"
  (a type absent from it), each with probability one half.

The train / test questions come from the synthetic train / test splits. :func:`scene_text`
writes a scene graph as words (the text-only context of the tiny LM's pretraining).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datamodules.synthetic.scene import Scene
from datamodules.synthetic.vocabulary import OBJECT_COLOURS, SHAPES

QUESTION_TYPES = ("colour", "count", "position", "presence")
NUMBERS = ("zero", "one", "two", "three", "four", "five")


@dataclass(frozen=True)
class Question:
    """One question about image ``image_index`` of a split (or of a list of images)."""

    image_index: int
    question: str
    answer: str
    type: str


def _rng(seed: int, image_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"questions:{seed}:{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """``(type, question, answer)`` for one scene, in ``QUESTION_TYPES`` order."""
    out = []
    shapes = Counter(o.shape for o in scene.objects)
    single = [o for o in scene.objects if shapes[o.shape] == 1]
    if single:
        o = single[int(rng.integers(len(single)))]
        out.append(("colour", f"What colour is the {o.shape}?", o.colour))
    out.append(("count", "How many objects are there?", NUMBERS[len(scene.objects)]))
    kinds = Counter(o.kind for o in scene.objects)
    unique = [o for o in scene.objects if kinds[o.kind] == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        if rng.random() < 0.5:
            out.append(
                ("position", f"Is the {o.colour} {o.shape} on the left, in the center or on the right?", o.column)
            )
        else:
            out.append(("position", f"Is the {o.colour} {o.shape} at the top, in the middle or at the bottom?", o.row))
    if rng.random() < 0.5:
        colour, shape = sorted(scene.kinds)[int(rng.integers(len(scene.kinds)))]
        out.append(("presence", f"Is there a {colour} {shape}?", "yes"))
    else:
        absent = [(c, s) for c in OBJECT_COLOURS for s in SHAPES if (c, s) not in scene.kinds]
        colour, shape = absent[int(rng.integers(len(absent)))]
        out.append(("presence", f"Is there a {colour} {shape}?", "no"))
    return out


def scene_text(scene: Mapping[str, Any]) -> str:
    """The scene graph as words ("a large red circle at the top left, ..."): the context before
    the question in the tiny LM's text-only pretraining (lightning_modules/vqa.py), whose place
    the image's projected queries take at VQA time."""
    objects = [f"a {o['size']} {o['colour']} {o['shape']} at the {o['row']} {o['column']}" for o in scene["objects"]]
    return f"{NUMBERS[len(objects)]} objects: " + ", ".join(objects) + "."


def split_questions(scenes: Sequence[tuple[str, Mapping[str, Any]]], seed: int) -> list[Question]:
    """The questions of a split: ``scenes`` is ``[(image_id, scene JSON)]`` in split order."""
    out = []
    for index, (image_id, scene) in enumerate(scenes):
        for kind, question, answer in scene_questions(Scene.from_json(scene), _rng(seed, image_id)):
            out.append(Question(index, question, answer, kind))
    return out
