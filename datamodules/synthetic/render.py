"""Draw a SynthScenes scene as an RGB image, deterministically.

The background is made at the target size (pixel-exact stripes, checks and noise), the
objects are drawn over it at ``SUPERSAMPLE`` times that size and the result is reduced
with a box filter (anti-aliased edges, no randomness). The background's texture details
(stripe direction and width, checker size, noise values) come from the image's own
``render`` random stream; captions never mention them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from datamodules.synthetic.scene import Background, Scene
from datamodules.synthetic.vocabulary import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    COLUMNS,
    OBJECT_COLOURS,
    SHAPES,
    SIZES,
    Colour,
)

SUPERSAMPLE = 4
RGB = tuple[int, int, int]
ShapeDrawer = Callable[[ImageDraw.ImageDraw, float, float, float, RGB], None]
PatternMaker = Callable[[Colour, int, np.random.Generator], np.ndarray]


# -- shapes: (draw, centre x, centre y, radius, colour), in supersampled pixels ----------
def _regular(cx: float, cy: float, radii: list[float], start_deg: float = -90.0) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    start = math.radians(start_deg)
    return [(cx + r * math.cos(start + i * step), cy + r * math.sin(start + i * step)) for i, r in enumerate(radii)]


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    h = 0.82 * r
    draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.polygon(_regular(cx, cy + 0.12 * r, [r] * 3), fill=fill)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.polygon(_regular(cx, cy + 0.05 * r, [r, 0.45 * r] * 5), fill=fill)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    arm, w = 0.9 * r, 0.3 * r
    draw.rectangle([cx - arm, cy - w, cx + arm, cy + w], fill=fill)
    draw.rectangle([cx - w, cy - arm, cx + w, cy + arm], fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.polygon([(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)], fill=fill)


def _ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, round(0.4 * r)))


SHAPE_DRAWERS: dict[str, ShapeDrawer] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "diamond": _diamond,
    "ring": _ring,
}


# -- background patterns: (colour, image side, rng) -> uint8 [side, side, 3] -------------
def _tones(colour: Colour, mask: np.ndarray) -> np.ndarray:
    tones = np.asarray([colour.rgb, colour.shade or colour.rgb], dtype=np.uint8)
    return tones[mask.astype(np.intp)]


def _plain(colour: Colour, side: int, rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour.rgb, dtype=np.uint8), (side, side, 3)).copy()


def _striped(colour: Colour, side: int, rng: np.random.Generator) -> np.ndarray:
    direction = int(rng.integers(3))  # 0 vertical, 1 horizontal, 2 diagonal
    half_period = int(rng.integers(2, 5)) * max(1, side // 32)
    ys, xs = np.ogrid[:side, :side]
    coord = (np.broadcast_to(xs, (side, side)), np.broadcast_to(ys, (side, side)), xs + ys)[direction]
    return _tones(colour, (coord // half_period) % 2 == 1)


def _checkered(colour: Colour, side: int, rng: np.random.Generator) -> np.ndarray:
    square = int(rng.integers(3, 7)) * max(1, side // 32)
    ys, xs = np.ogrid[:side, :side]
    return _tones(colour, (ys // square + xs // square) % 2 == 1)


def _noisy(colour: Colour, side: int, rng: np.random.Generator) -> np.ndarray:
    blocks = max(1, side // 2)
    noise = rng.integers(-40, 41, size=(blocks, blocks))
    index = np.arange(side) * blocks // side
    values = np.asarray(colour.rgb, dtype=np.int16) + noise[np.ix_(index, index)][..., None]
    return np.clip(values, 0, 255).astype(np.uint8)


PATTERN_MAKERS: dict[str, PatternMaker] = {
    "plain": _plain,
    "striped": _striped,
    "checkered": _checkered,
    "noisy": _noisy,
}

if set(SHAPE_DRAWERS) != set(SHAPES) or set(PATTERN_MAKERS) != set(BACKGROUND_PATTERNS):
    raise AssertionError("render.py must draw every shape and pattern of the vocabulary")


def render_background(background: Background, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The background at the target size, as a uint8 array ``[image_size, image_size, 3]``."""
    return PATTERN_MAKERS[background.pattern](BACKGROUND_COLOURS[background.colour], image_size, rng)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` on its background as an ``image_size`` x ``image_size`` RGB image."""
    side = image_size * SUPERSAMPLE
    background = Image.fromarray(render_background(scene.background, image_size, rng))
    canvas = background.resize((side, side), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    cell = side / len(COLUMNS)
    for obj in scene.objects:
        radius = SIZES[obj.size] * cell
        SHAPE_DRAWERS[obj.shape](draw, obj.x * side, obj.y * side, radius, OBJECT_COLOURS[obj.colour].rgb)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)
