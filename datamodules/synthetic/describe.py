"""Short descriptions of SynthScenes for reports: its vocabulary and its relevance statistics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from datamodules.base import ImageRecord
from datamodules.synthetic.captions import LEVELS
from datamodules.synthetic.constraints import RELATIONS
from datamodules.synthetic.options import FORMAT_NAME, GENERATOR_VERSION, SyntheticOptions
from datamodules.synthetic.vocabulary import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    COLUMNS,
    OBJECT_COLOURS,
    ROWS,
    SHAPES,
    SIZES,
)


def describe_benchmark(options: SyntheticOptions | None = None) -> dict[str, Any]:
    """Vocabulary sizes, split sizes and the relevance definitions, as a JSON-able dict."""
    options = options or SyntheticOptions()
    return {
        "name": FORMAT_NAME,
        "version": GENERATOR_VERSION,
        "options": options.to_dict(),
        "images": {split: options.n_images(split) for split in ("train", "val", "test")},
        "captions_per_image": len(LEVELS),
        "complexity_levels": list(LEVELS),
        "vocabulary": {
            "shapes": list(SHAPES),
            "object_colours": list(OBJECT_COLOURS),
            "sizes": list(SIZES),
            "grid": f"{len(ROWS)}x{len(COLUMNS)}",
            "relations": list(RELATIONS),
            "background_patterns": list(BACKGROUND_PATTERNS),
            "background_colours": list(BACKGROUND_COLOURS),
        },
        "objects_per_image": [options.min_objects, options.max_objects],
        "t2i_relevance": "the image's scene satisfies every constraint of the caption",
        "i2i_relevance": "the two scenes hold the same set of (colour, shape) object types",
    }


def relevance_stats(records: Sequence[ImageRecord]) -> dict[str, Any]:
    """Per complexity level: number of captions and mean / median / max relevant images;
    plus the share of images with at least one other i2i-relevant image."""
    per_level: dict[int, list[int]] = defaultdict(list)
    for rec in records:
        for cap, ids in zip(rec.captions, rec.relevant_images or ((rec.image_id,),) * len(rec.captions), strict=True):
            per_level[cap.complexity].append(len(ids))
    levels = {
        level: {
            "n_captions": len(counts),
            "mean_relevant": float(np.mean(counts)),
            "median_relevant": float(np.median(counts)),
            "max_relevant": int(np.max(counts)),
        }
        for level, counts in sorted(per_level.items())
    }
    with_i2i = sum(1 for r in records if r.i2i_relevant)
    return {"n_images": len(records), "levels": levels, "i2i_query_share": with_i2i / max(1, len(records))}
