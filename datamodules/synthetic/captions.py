"""Captions of graded complexity for a SynthScenes scene: one per level, levels 1 to 5.

Every caption is built from the scene's own attributes, so its image always satisfies it.
Levels grow with the number of atomic requirements (each level has strictly more than the
one below, so an image's five captions are always distinct):

====  =====================================================  ==============================
lvl   scenes with >= 2 objects                               scenes with 1 object
====  =====================================================  ==============================
1     colour + shape: "a red circle"                         same
2     + size ("a large red circle") or + background          same
      ("a red circle on a striped background")
3     two objects: "a red circle and a blue square"          size, colour, shape + one
                                                             background attribute
4     two objects and a relation:                            size, colour, shape + pattern
      "a red circle to the left of a blue square"            and colour of the background
5     two sized objects, a relation, a third object when     size, colour, shape, row or
      there is one, and the background: "a large red         column, background pattern and
      circle to the left of a small blue square, and a       colour: "a large red circle on
      green star, on a striped background"                   the left on a striped pink
                                                             background"
====  =====================================================  ==============================

Which objects, which relation (among those that hold) and which background attributes are
used is drawn from the image's own ``captions`` random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from datamodules.synthetic.constraints import (
    RELATIONS,
    BackgroundConstraint,
    CaptionConstraints,
    ObjectConstraint,
    Relation,
)
from datamodules.synthetic.scene import Scene, SceneObject

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

KIND = ("colour", "shape")
SIZED = ("size", "colour", "shape")
BACKGROUND_CHOICES: tuple[tuple[str, ...], ...] = (("pattern",), ("colour",))
BACKGROUND_CHOICES_L5: tuple[tuple[str, ...], ...] = (("pattern",), ("colour",), ("pattern", "colour"))


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _object(obj: SceneObject, attributes: Sequence[str]) -> ObjectConstraint:
    return ObjectConstraint(**{a: getattr(obj, a) for a in attributes})


def _background(scene: Scene, attributes: Sequence[str]) -> BackgroundConstraint:
    return BackgroundConstraint(**{a: getattr(scene.background, a) for a in attributes})


def _pair(scene: Scene, rng: np.random.Generator) -> tuple[int, int]:
    """Two distinct objects, ordered; pairs of different (colour, shape) types preferred."""
    n = len(scene.objects)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    distinct = [(i, j) for i, j in pairs if scene.objects[i].kind != scene.objects[j].kind]
    return _choice(rng, distinct or pairs)


def _relation(scene: Scene, i: int, j: int, rng: np.random.Generator) -> str:
    a, b = scene.objects[i].cell, scene.objects[j].cell
    return _choice(rng, [name for name, kind in RELATIONS.items() if kind.holds(a, b)])


def level1(scene: Scene, rng: np.random.Generator) -> CaptionConstraints:
    return CaptionConstraints((_object(_choice(rng, scene.objects), KIND),))


def level2(scene: Scene, rng: np.random.Generator) -> CaptionConstraints:
    obj = _choice(rng, scene.objects)
    if rng.integers(2) == 0:
        return CaptionConstraints((_object(obj, SIZED),))
    return CaptionConstraints((_object(obj, KIND),), background=_background(scene, _choice(rng, BACKGROUND_CHOICES)))


def level3(scene: Scene, rng: np.random.Generator) -> CaptionConstraints:
    if len(scene.objects) == 1:
        bg = _background(scene, _choice(rng, BACKGROUND_CHOICES))
        return CaptionConstraints((_object(scene.objects[0], SIZED),), background=bg)
    i, j = _pair(scene, rng)
    return CaptionConstraints((_object(scene.objects[i], KIND), _object(scene.objects[j], KIND)))


def level4(scene: Scene, rng: np.random.Generator) -> CaptionConstraints:
    if len(scene.objects) == 1:
        bg = _background(scene, ("pattern", "colour"))
        return CaptionConstraints((_object(scene.objects[0], SIZED),), background=bg)
    i, j = _pair(scene, rng)
    objects = (_object(scene.objects[i], KIND), _object(scene.objects[j], KIND))
    return CaptionConstraints(objects, (Relation(0, _relation(scene, i, j, rng), 1),))


def level5(scene: Scene, rng: np.random.Generator) -> CaptionConstraints:
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        position = _choice(rng, ("row", "column"))
        bg = _background(scene, ("pattern", "colour"))
        return CaptionConstraints((_object(obj, (*SIZED, position)),), background=bg)
    i, j = _pair(scene, rng)
    objects = [_object(scene.objects[i], SIZED), _object(scene.objects[j], SIZED)]
    others = [k for k in range(len(scene.objects)) if k not in (i, j)]
    if others:
        objects.append(_object(scene.objects[_choice(rng, others)], KIND))
    relation = Relation(0, _relation(scene, i, j, rng), 1)
    bg = _background(scene, _choice(rng, BACKGROUND_CHOICES_L5))
    return CaptionConstraints(tuple(objects), (relation,), bg)


LEVEL_BUILDERS: dict[int, Callable[[Scene, np.random.Generator], CaptionConstraints]] = {
    1: level1,
    2: level2,
    3: level3,
    4: level4,
    5: level5,
}


def make_captions(scene: Scene, rng: np.random.Generator) -> list[tuple[int, CaptionConstraints]]:
    """One caption per complexity level, as ``(level, constraints)``; texts are distinct."""
    captions = [(level, LEVEL_BUILDERS[level](scene, rng)) for level in LEVELS]
    texts = [c.text() for _, c in captions]
    if len(set(texts)) != len(texts):
        raise AssertionError(f"duplicate captions for one scene: {texts}")
    return captions
