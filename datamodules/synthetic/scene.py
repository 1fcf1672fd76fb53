"""A SynthScenes scene (objects on a background) and how one is sampled.

A scene holds 1 to 4 objects, each in its own cell of a 3 x 3 grid (so objects never
overlap, and "left of" / "above" between two objects are well defined by their cells),
on a background with a pattern and a colour. The scene is everything relevance depends
on; the renderer only adds texture details (stripe direction, noise) that no caption
mentions.

JSON form (stored in the annotations)::

    {"objects": [{"shape": "circle", "colour": "red", "size": "large",
                  "row": "top", "column": "left", "x": 0.1712, "y": 0.1581}, ...],
     "background": {"pattern": "striped", "colour": "gray"}}

``x``, ``y``: the object's centre as a fraction of the image side (from the left, from
the top).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from datamodules.synthetic.vocabulary import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    COLUMNS,
    MAX_JITTER,
    OBJECT_ATTRIBUTES,
    OBJECT_COLOURS,
    ROWS,
    SHAPES,
    SIZES,
)

MAX_OBJECTS = 4


@dataclass(frozen=True)
class SceneObject:
    """One object: what it is, which grid cell holds it, and its exact centre."""

    shape: str
    colour: str
    size: str
    row: str
    column: str
    x: float
    y: float

    def __post_init__(self) -> None:
        for attribute, vocabulary in OBJECT_ATTRIBUTES.items():
            if getattr(self, attribute) not in vocabulary:
                raise ValueError(f"SceneObject.{attribute}={getattr(self, attribute)!r} not in {vocabulary}")
        for axis, cell, names in (("x", self.column, COLUMNS), ("y", self.row, ROWS)):
            centre = (names.index(cell) + 0.5) / len(names)
            if abs(getattr(self, axis) - centre) > MAX_JITTER / len(names) + 1e-4:
                raise ValueError(f"SceneObject.{axis}={getattr(self, axis)} is outside its {cell!r} cell")

    @property
    def cell(self) -> tuple[int, int]:
        """(row index, column index) in the grid."""
        return ROWS.index(self.row), COLUMNS.index(self.column)

    @property
    def kind(self) -> tuple[str, str]:
        """The object type used by image-to-image relevance: (colour, shape)."""
        return self.colour, self.shape

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "row": self.row,
            "column": self.column,
            "x": self.x,
            "y": self.y,
        }


@dataclass(frozen=True)
class Background:
    pattern: str
    colour: str

    def __post_init__(self) -> None:
        if self.pattern not in BACKGROUND_PATTERNS:
            raise ValueError(f"Background.pattern={self.pattern!r} not in {BACKGROUND_PATTERNS}")
        if self.colour not in BACKGROUND_COLOURS:
            raise ValueError(f"Background.colour={self.colour!r} not in {tuple(BACKGROUND_COLOURS)}")

    def to_json(self) -> dict[str, str]:
        return {"pattern": self.pattern, "colour": self.colour}


def allowed_background_colours(object_colours: set[str] | frozenset[str]) -> tuple[str, ...]:
    """Background colours that no object colour equals or clashes with, in vocabulary order."""
    banned = set(object_colours)
    for c in object_colours:
        banned |= OBJECT_COLOURS[c].clashes
    return tuple(name for name in BACKGROUND_COLOURS if name not in banned)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"Scene must hold 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"Scene objects must lie in distinct grid cells, got {cells}")
        if self.background.colour not in allowed_background_colours({o.colour for o in self.objects}):
            raise ValueError(f"Scene background colour {self.background.colour!r} clashes with an object colour")

    @property
    def kinds(self) -> frozenset[tuple[str, str]]:
        """The set of (colour, shape) object types: what image-to-image relevance compares."""
        return frozenset(o.kind for o in self.objects)

    def to_json(self) -> dict[str, Any]:
        return {"objects": [o.to_json() for o in self.objects], "background": self.background.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            background=Background(**data["background"]),
        )


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = MAX_OBJECTS) -> Scene:
    """Draw a scene: object count, distinct cells, attributes, then a compatible background."""
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(len(ROWS) * len(COLUMNS), size=n, replace=False)
    objects = []
    for cell in sorted(int(c) for c in cells):
        r, c = divmod(cell, len(COLUMNS))
        jitter = rng.uniform(-MAX_JITTER, MAX_JITTER, size=2)
        objects.append(
            SceneObject(
                shape=_pick(rng, SHAPES),
                colour=_pick(rng, tuple(OBJECT_COLOURS)),
                size=_pick(rng, tuple(SIZES)),
                row=ROWS[r],
                column=COLUMNS[c],
                x=round((c + 0.5 + float(jitter[0])) / len(COLUMNS), 4),
                y=round((r + 0.5 + float(jitter[1])) / len(ROWS), 4),
            )
        )
    colours = allowed_background_colours({o.colour for o in objects})
    background = Background(pattern=_pick(rng, BACKGROUND_PATTERNS), colour=_pick(rng, colours))
    return Scene(tuple(objects), background)
