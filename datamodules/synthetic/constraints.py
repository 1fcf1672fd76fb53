"""Structured caption constraints: what a caption requires, its text, and the exact check.

A caption is a conjunction of constraints on a scene:

* object constraints -- each names some attributes (shape, colour, size, row, column) of
  one object; the scene must hold a *distinct* object for every object constraint
  (existential, not exclusive: "a red circle" is satisfied by any scene with at least one
  red circle, whatever else it holds);
* relations between two of those objects ("left_of", "right_of", "above", "below"),
  judged by grid cells: A is left of B when A's column is strictly left of B's column,
  A is above B when A's row is strictly higher;
* a background constraint (pattern and/or colour).

:meth:`CaptionConstraints.satisfied_by` is the exact definition of text-to-image relevance:
a brute-force search over injective assignments of object constraints to scene objects
(at most 4 x 3 x 2 x 1 of them).

JSON form (stored with each caption)::

    {"objects": [{"colour": "red", "shape": "circle", "size": "large"}, ...],
     "relations": [{"subject": 0, "relation": "left_of", "object": 1}],
     "background": {"pattern": "striped"}}

Absent attributes are simply left out; ``relations`` indexes into ``objects``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

from datamodules.synthetic.scene import Background, Scene, SceneObject
from datamodules.synthetic.vocabulary import BACKGROUND_ATTRIBUTES, OBJECT_ATTRIBUTES

Cell = tuple[int, int]  # (row index, column index)


@dataclass(frozen=True)
class RelationKind:
    """A spatial relation: its words in a caption and its test on two grid cells."""

    phrase: str
    holds: Callable[[Cell, Cell], bool]


RELATIONS: dict[str, RelationKind] = {
    "left_of": RelationKind("to the left of", lambda a, b: a[1] < b[1]),
    "right_of": RelationKind("to the right of", lambda a, b: a[1] > b[1]),
    "above": RelationKind("above", lambda a, b: a[0] < b[0]),
    "below": RelationKind("below", lambda a, b: a[0] > b[0]),
}

#: words for an object's position, by (row or None, column or None)
POSITION_PHRASES: dict[tuple[str | None, str | None], str] = {
    (None, "left"): "on the left",
    (None, "center"): "in the center column",
    (None, "right"): "on the right",
    ("top", None): "at the top",
    ("middle", None): "in the middle row",
    ("bottom", None): "at the bottom",
    **{(r, c): f"in the {r} {c}" for r in OBJECT_ATTRIBUTES["row"] for c in OBJECT_ATTRIBUTES["column"]},
    ("middle", "center"): "in the center",
}


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _check_keys(kind: str, data: Mapping[str, Any], valid: Mapping[str, Any] | tuple[str, ...]) -> None:
    for key in data:
        if key not in valid:
            raise ValueError(f"{kind}: unknown key {key!r}; valid keys: {', '.join(valid)}")


@dataclass(frozen=True)
class ObjectConstraint:
    """Required attributes of one object; ``None`` means "any"."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    row: str | None = None
    column: str | None = None

    #: the constrained (attribute, value) pairs, computed once (matching is the hot loop)
    items: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        items = tuple((name, getattr(self, name)) for name in OBJECT_ATTRIBUTES if getattr(self, name) is not None)
        for name, value in items:
            if value not in OBJECT_ATTRIBUTES[name]:
                raise ValueError(f"ObjectConstraint.{name}={value!r} not in {OBJECT_ATTRIBUTES[name]}")
        if not items:
            raise ValueError("ObjectConstraint needs at least one attribute")
        object.__setattr__(self, "items", items)

    def attributes(self) -> dict[str, str]:
        """The constrained attributes, in vocabulary order."""
        return dict(self.items)

    def matches(self, obj: SceneObject) -> bool:
        return all(getattr(obj, name) == value for name, value in self.items)

    def phrase(self) -> str:
        words = [w for w in (self.size, self.colour, self.shape or "object") if w is not None]
        position = POSITION_PHRASES.get((self.row, self.column))
        return _with_article(words) + (f" {position}" if position else "")

    def to_json(self) -> dict[str, str]:
        return self.attributes()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectConstraint:
        _check_keys("object constraint", data, OBJECT_ATTRIBUTES)
        return cls(**data)


@dataclass(frozen=True)
class Relation:
    """``objects[subject]`` stands in ``relation`` to ``objects[object]``."""

    subject: int
    relation: str
    object: int

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"Relation.relation={self.relation!r} not in {tuple(RELATIONS)}")
        if self.subject == self.object:
            raise ValueError("Relation.subject and Relation.object must differ")

    def holds(self, a: SceneObject, b: SceneObject) -> bool:
        return RELATIONS[self.relation].holds(a.cell, b.cell)

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "relation": self.relation, "object": self.object}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Relation:
        _check_keys("relation", data, ("subject", "relation", "object"))
        return cls(int(data["subject"]), str(data["relation"]), int(data["object"]))


@dataclass(frozen=True)
class BackgroundConstraint:
    """Required background pattern and/or colour; both ``None`` = unconstrained."""

    pattern: str | None = None
    colour: str | None = None

    def __post_init__(self) -> None:
        for name, value in self.attributes().items():
            if value not in BACKGROUND_ATTRIBUTES[name]:
                raise ValueError(f"BackgroundConstraint.{name}={value!r} not in {BACKGROUND_ATTRIBUTES[name]}")

    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in BACKGROUND_ATTRIBUTES if getattr(self, name) is not None}

    def matches(self, background: Background) -> bool:
        return all(getattr(background, name) == value for name, value in self.attributes().items())

    def phrase(self) -> str | None:
        words = [w for w in (self.pattern, self.colour) if w is not None]
        return _with_article([*words, "background"]) if words else None

    def to_json(self) -> dict[str, str]:
        return self.attributes()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackgroundConstraint:
        _check_keys("background constraint", data, BACKGROUND_ATTRIBUTES)
        return cls(**data)


@dataclass(frozen=True)
class CaptionConstraints:
    """Everything one caption requires of a scene."""

    objects: tuple[ObjectConstraint, ...]
    relations: tuple[Relation, ...] = ()
    background: BackgroundConstraint = BackgroundConstraint()

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 4:
            raise ValueError(f"CaptionConstraints needs 1..4 object constraints, got {len(self.objects)}")
        used: list[int] = []
        for rel in self.relations:
            for i in (rel.subject, rel.object):
                if not 0 <= i < len(self.objects):
                    raise ValueError(f"relation index {i} outside the {len(self.objects)} object constraints")
            used += [rel.subject, rel.object]
        if len(set(used)) != len(used):
            raise ValueError("an object constraint may take part in at most one relation (unambiguous text)")

    # -- the exact relevance check -------------------------------------------------------
    def satisfied_by(self, scene: Scene) -> bool:
        """True when the scene meets every constraint (some injective object assignment)."""
        if not self.background.matches(scene.background):
            return False
        objs = scene.objects
        fits = [[c.matches(o) for o in objs] for c in self.objects]  # constraint x object
        for assignment in permutations(range(len(objs)), len(self.objects)):
            if all(fits[c][a] for c, a in enumerate(assignment)) and all(
                r.holds(objs[assignment[r.subject]], objs[assignment[r.object]]) for r in self.relations
            ):
                return True
        return False

    def n_atoms(self) -> int:
        """Number of atomic requirements (attributes, relations, background attributes)."""
        return sum(len(o.attributes()) for o in self.objects) + len(self.relations) + len(self.background.attributes())

    # -- text ----------------------------------------------------------------------------
    def text(self) -> str:
        """The caption: relation clauses first, then the remaining objects, then the background."""
        parts = []
        in_relation: set[int] = set()
        for rel in self.relations:
            subject, obj = self.objects[rel.subject].phrase(), self.objects[rel.object].phrase()
            parts.append(f"{subject} {RELATIONS[rel.relation].phrase} {obj}")
            in_relation |= {rel.subject, rel.object}
        parts += [o.phrase() for i, o in enumerate(self.objects) if i not in in_relation]
        if len(parts) == 1:
            text = parts[0]
        elif len(parts) == 2 and not self.relations:
            text = f"{parts[0]} and {parts[1]}"
        else:
            text = ", ".join(parts[:-1]) + ", and " + parts[-1]
        background = self.background.phrase()
        if background:
            text += (", on " if len(self.objects) > 1 else " on ") + background
        return text

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "objects": [o.to_json() for o in self.objects],
            "relations": [r.to_json() for r in self.relations],
            "background": self.background.to_json(),
        }

    def key(self) -> str:
        """A canonical string: equal keys <=> equal constraints."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaptionConstraints:
        _check_keys("caption constraints", data, ("objects", "relations", "background"))
        return cls(
            objects=tuple(ObjectConstraint.from_json(o) for o in data["objects"]),
            relations=tuple(Relation.from_json(r) for r in data.get("relations", ())),
            background=BackgroundConstraint.from_json(data.get("background") or {}),
        )
