"""Image-to-image retrieval (``bench run --task i2i``): the query images and their relevance.

Two query protocols, named by a dataset's ``i2i_queries`` attribute (see ``QUERY_PROTOCOLS``):

* ``"gallery"``: the gallery images are the queries, each excluded from its own ranking;
  relevance is what the dataset records (``ImageRecord.i2i_relevant``): synthetic -- the
  other images whose scene holds the same set of (colour, shape) object types; MedPix --
  the other images of the same case (``U_id``). A query without a relevant image is
  skipped and counted (``i2i/n_skipped``).
* ``"augmented_view"`` (COCO, RSICap: nothing in the data relates two images): "same
  image" -- each query is a deterministic augmented view of one gallery image (a random
  crop keeping ``crop`` of each side, then a horizontal flip with probability ``flip``,
  drawn from a generator seeded by the run seed and the image id), and its one relevant
  item is that original image. Nothing is excluded (the view is not in the gallery).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.base import DataError, EvalSet, Relevance, Transform, load_image


@dataclass(frozen=True)
class ViewOptions:
    """How the ``augmented_view`` queries are drawn.

    crop: (min, max) share of each side an image's crop keeps (drawn uniformly per image).
    flip: probability of a horizontal flip.
    """

    crop: tuple[float, float] = (0.7, 0.9)
    flip: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", tuple(self.crop))
        lo, hi = self.crop if len(self.crop) == 2 else (0.0, -1.0)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"task_args.crop must be [min, max] with 0 < min <= max <= 1, got {list(self.crop)}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"task_args.flip must be in [0, 1], got {self.flip}")


@dataclass(frozen=True)
class ImageView:
    """One query image: gallery image ``source``, cropped to ``box`` (left, top, right,
    bottom as shares of the width and height), then flipped left-right if ``flip``."""

    source: int
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    flip: bool = False

    def apply(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        left, top, right, bottom = self.box
        px = (
            round(left * w),
            round(top * h),
            max(round(left * w) + 1, round(right * w)),
            max(round(top * h) + 1, round(bottom * h)),
        )
        out = image.crop(px)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else out


def draw_view(source: int, image_id: str, seed: int, options: ViewOptions) -> ImageView:
    """The view of one image: a generator seeded by (seed, image id), so a view does not
    depend on which other images are evaluated or in which order."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    sw, sh = rng.uniform(*options.crop, size=2)
    left, top = rng.uniform(0, 1 - sw), rng.uniform(0, 1 - sh)
    return ImageView(
        source, (float(left), float(top), float(left + sw), float(top + sh)), bool(rng.random() < options.flip)
    )


def gallery_queries(eval_set: EvalSet, seed: int, options: ViewOptions) -> EvalSet:
    """The gallery is the query set; the dataset's own ``i2i`` relevance."""
    return replace(eval_set, i2i_views=None)


def augmented_view_queries(eval_set: EvalSet, seed: int, options: ViewOptions) -> EvalSet:
    """One augmented view per gallery image, relevant to its original only."""
    views = tuple(draw_view(i, image_id, seed, options) for i, image_id in enumerate(eval_set.image_ids))
    relevance = Relevance.from_lists([[v.source] for v in views], eval_set.n_images)
    return replace(eval_set, i2i_views=views, relevance=eval_set.relevance | {"i2i": relevance})


#: query protocol name (a dataset's ``i2i_queries``) -> builder of the i2i evaluation set
QUERY_PROTOCOLS = {"gallery": gallery_queries, "augmented_view": augmented_view_queries}


def i2i_eval_set(eval_set: EvalSet, protocol: str, seed: int, options: ViewOptions) -> EvalSet:
    try:
        build = QUERY_PROTOCOLS[protocol]
    except KeyError:
        raise DataError(f"unknown i2i query protocol {protocol!r}; known: {', '.join(QUERY_PROTOCOLS)}") from None
    return build(eval_set, seed, options)


class ViewImages(Dataset):
    """The ``augmented_view`` queries: yields ``(query_index, transform(view(image)))``. The
    image is decoded at full size (no JPEG draft: the crop is then resized up, not down)."""

    def __init__(self, paths: Sequence[Path], views: Sequence[ImageView], transform: Transform) -> None:
        self.paths, self.views, self.transform = list(paths), list(views), transform

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        view = self.views[i]
        return i, self.transform(view.apply(load_image(self.paths[view.source])))
