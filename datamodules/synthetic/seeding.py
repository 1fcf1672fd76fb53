"""Independent random streams per image: (seed, split, image index, purpose) -> Generator.

Every image of SynthScenes is drawn from its own streams, so image ``i`` of a split does
not depend on how many images the split has, nor on any other image; and the scene, its
rendering and its captions use separate streams, so changing how captions are drawn does
not change the pixels.
"""

from __future__ import annotations

import numpy as np

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
STREAM_CODES: dict[str, int] = {"scene": 0, "render": 1, "captions": 2}


def image_rng(seed: int, split: str, index: int, stream: str) -> np.random.Generator:
    """The generator of one purpose (``scene``, ``render``, ``captions``) of one image."""
    entropy = [seed, SPLIT_CODES[split], index, STREAM_CODES[stream]]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
