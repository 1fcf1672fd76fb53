"""The closed vocabulary of SynthScenes: shapes, colours, sizes, grid cells, backgrounds.

Everything that a scene can contain and a caption can say is listed here as data, so the
sampler, the renderer, the caption writer and the relevance check all agree on one set of
words. Names are the exact words used in captions.

* 7 shapes, 8 object colours, 2 sizes, a 3 x 3 grid (rows top/middle/bottom, columns
  left/center/right), 4 background patterns and 5 background colours.
* Background colours never equal an object colour of the same scene; a few pairs with
  poor contrast (a yellow object on white) are avoided too (``Colour.clashes``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    """A named colour. ``shade`` is the second tone of textured backgrounds."""

    name: str
    rgb: tuple[int, int, int]
    shade: tuple[int, int, int] | None = None
    #: background colours an object of this colour must not be drawn on
    clashes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for channel in (*self.rgb, *(self.shade or ())):
            if not 0 <= channel <= 255:
                raise ValueError(f"Colour {self.name!r}: channel {channel} outside [0, 255]")


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")

OBJECT_COLOURS: dict[str, Colour] = {
    c.name: c
    for c in (
        Colour("red", (220, 30, 30)),
        Colour("green", (30, 160, 50), clashes=frozenset({"teal"})),
        Colour("blue", (30, 80, 225), clashes=frozenset({"teal"})),
        Colour("yellow", (245, 215, 25), clashes=frozenset({"white"})),
        Colour("purple", (140, 50, 190)),
        Colour("orange", (250, 135, 10)),
        Colour("white", (250, 250, 250), clashes=frozenset({"white"})),
        Colour("black", (20, 20, 20), clashes=frozenset({"black"})),
    )
}

BACKGROUND_COLOURS: dict[str, Colour] = {
    c.name: c
    for c in (
        Colour("gray", (128, 128, 128), shade=(165, 165, 165)),
        Colour("white", (235, 235, 235), shade=(195, 195, 195)),
        Colour("black", (35, 35, 35), shade=(75, 75, 75)),
        Colour("pink", (250, 190, 200), shade=(225, 150, 165)),
        Colour("teal", (0, 128, 128), shade=(0, 95, 95)),
    )
}

BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "noisy")

#: size name -> radius as a fraction of a grid cell's side
SIZES: dict[str, float] = {"small": 0.24, "large": 0.42}

ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")

#: an object's centre may move this fraction of a cell away from the cell's centre
#: (small enough that the largest object stays inside its cell: no overlap)
MAX_JITTER = 0.06

#: object attributes a caption may constrain, with their vocabularies
OBJECT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(OBJECT_COLOURS),
    "size": tuple(SIZES),
    "row": ROWS,
    "column": COLUMNS,
}

#: background attributes a caption may constrain
BACKGROUND_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "pattern": BACKGROUND_PATTERNS,
    "colour": tuple(BACKGROUND_COLOURS),
}

if max(SIZES.values()) + MAX_JITTER > 0.5:
    raise AssertionError("the largest object must fit inside its grid cell")
