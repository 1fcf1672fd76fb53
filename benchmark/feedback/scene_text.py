"""SynthScenes words in free text: what a phrase claims about a scene, and whether it holds.

Used by the simulated user (to judge an answer option against the target's scene graph)
and by the ``rules`` question writer (to read the stored captions it is shown). Only the
closed vocabulary of ``datamodules/synthetic/vocabulary.py`` is understood; other words
are ignored. A phrase is read as

* object mentions: the text is cut into segments at "and", commas, semicolons and the
  relation phrases ("to the left of", "above", ...); a segment's shape (plurals too),
  object colour, size and position words ("on the left", "at the top", "in the top left",
  "in the center column", "in the center") form one object mention;
* one background mention: pattern words, and colour words followed by pattern words and
  "background" ("a striped pink background").

:meth:`Mention.holds_in` is true when the scene has the background and, for every object
mention, some object with all its attributes (relations are not judged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from datamodules.synthetic.scene import Scene
from datamodules.synthetic.vocabulary import BACKGROUND_PATTERNS, COLUMNS, OBJECT_COLOURS, ROWS, SHAPES, SIZES

COLOURS = frozenset(OBJECT_COLOURS) | frozenset(("gray", "grey", "pink", "teal"))
PATTERNS = frozenset(BACKGROUND_PATTERNS)
SHAPE_FORMS = {form: s for s in SHAPES for form in (s, s + "s", s + "es")}
_SPLIT = re.compile(r"\band\b|,|;|\bto the (?:left|right) of\b|\babove\b|\bbelow\b|\bnext to\b")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Mention:
    """What a phrase says: object mentions (attribute dicts) and a background dict."""

    objects: tuple[tuple[tuple[str, str], ...], ...] = ()
    background: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.objects and not self.background

    def object_dicts(self) -> list[dict[str, str]]:
        return [dict(o) for o in self.objects]

    def background_dict(self) -> dict[str, str]:
        return dict(self.background)

    def categories(self) -> set[str]:
        """Attribute names mentioned: ``shape``, ``colour``, ... and ``background.<name>``."""
        names = {k for o in self.objects for k, _ in o}
        return names | {f"background.{k}" for k, _ in self.background}

    def holds_in(self, scene: Scene) -> bool:
        bg = self.background_dict()
        if bg.get("pattern", scene.background.pattern) != scene.background.pattern:
            return False
        if bg.get("colour", scene.background.colour) != scene.background.colour:
            return False
        return all(any(all(getattr(o, k) == v for k, v in want) for o in scene.objects) for want in self.objects)

    def with_object_attributes(self, extra: dict[str, str]) -> Mention:
        """Each object mention (or a new one, if there is none) completed by ``extra`` where silent."""
        if not extra:
            return self
        objects = [dict(o) for o in self.objects] or [{}]
        merged = tuple(_canonical({**extra, **o}) for o in objects)
        return Mention(merged, self.background)


def _canonical(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    order = ("size", "colour", "shape", "row", "column")
    return tuple((k, d[k]) for k in order if k in d)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("grey", "gray"))


def _positions(tokens: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, w in enumerate(tokens):
        if w in ("top", "bottom") or (w == "middle" and "center" not in tokens[i + 1 : i + 2]):
            out["row"] = w
        elif w in ("left", "right"):
            out["column"] = w
        elif w == "center":
            out["column"] = "center"
            after, before = tokens[i + 1 : i + 2], tokens[i - 1 : i]
            if after != ["column"] and not (before and before[0] in ROWS):
                out.setdefault("row", "middle")  # "in the center" is the middle cell
        elif w == "middle" and "center" in tokens[i + 1 : i + 2]:
            out["row"] = "middle"
    return {k: v for k, v in out.items() if v in (ROWS if k == "row" else COLUMNS)}


def _segment(tokens: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(object attributes, background attributes) of one segment."""
    obj: dict[str, str] = {}
    bg: dict[str, str] = {}
    for i, w in enumerate(tokens):
        if w in PATTERNS:
            bg["pattern"] = w
        elif w in COLOURS:
            j = i + 1
            while j < len(tokens) and tokens[j] in PATTERNS:
                j += 1
            if j < len(tokens) and tokens[j] == "background":
                bg["colour"] = w
            elif w in OBJECT_COLOURS:
                obj["colour"] = w
        elif w in SIZES:
            obj["size"] = w
        elif w in SHAPE_FORMS:
            obj["shape"] = SHAPE_FORMS[w]
    obj.update(_positions(tokens))
    return obj, bg


@lru_cache(maxsize=1 << 16)
def read(text: str) -> Mention:
    """The object and background mentions of a phrase (empty if it names nothing known;
    cached: the same captions and options are read again every round)."""
    objects: list[tuple[tuple[str, str], ...]] = []
    background: dict[str, str] = {}
    for part in _SPLIT.split(text.lower()):
        obj, bg = _segment(words(part))
        background.update(bg)
        if obj:
            objects.append(_canonical(obj))
    return Mention(tuple(objects), _canonical_bg(background))


def _canonical_bg(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, d[k]) for k in ("pattern", "colour") if k in d)


def mentions_background(text: str) -> bool:
    return "background" in words(text)
