"""Generate the SynthScenes files once, atomically, into their cache folder.

Layout of ``<root>/synthscenes-v1-<options hash>/``::

    images/<split>/<image_id>.png     one RGB PNG per image
    annotations/<split>.json          see datamodules/synthetic/annotations.py

Everything is written into a hidden temporary sibling folder that is renamed into place
only once complete, so an interrupted run never leaves a folder that looks finished (a
crash may leave a ``.synthscenes-...tmp-*`` sibling, which is never read). The same options
always give the same bytes: each image depends only on (seed, split, index), PNGs are
written by Pillow with fixed parameters and no metadata, and the JSON is written in a
fixed order.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from datamodules.base import DataError
from datamodules.synthetic.annotations import annotation_path, image_entry, image_file, write_annotations
from datamodules.synthetic.captions import make_captions
from datamodules.synthetic.options import SyntheticOptions
from datamodules.synthetic.relevance import caption_relevance, image_relevance
from datamodules.synthetic.render import render_scene
from datamodules.synthetic.scene import sample_scene
from datamodules.synthetic.seeding import SPLIT_CODES, image_rng

PNG_PARAMS = {"format": "PNG", "compress_level": 6, "optimize": False}


def image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def write_split(options: SyntheticOptions, split: str, dest: Path) -> None:
    """Render every image of ``split`` under ``dest`` and write its annotation file."""
    n = options.n_images(split)
    ids = [image_id(split, i) for i in range(n)]
    (dest / "images" / split).mkdir(parents=True, exist_ok=True)
    scenes, captions = [], []
    for i in range(n):
        scene = sample_scene(image_rng(options.seed, split, i, "scene"), options.min_objects, options.max_objects)
        image = render_scene(scene, options.image_size, image_rng(options.seed, split, i, "render"))
        image.save(dest / image_file(split, ids[i]), **PNG_PARAMS)
        scenes.append(scene)
        captions.append(make_captions(scene, image_rng(options.seed, split, i, "captions")))
    flat = [c for per_image in captions for _, c in per_image]
    relevant = iter(caption_relevance(scenes, flat))
    i2i = image_relevance(scenes)
    entries = [
        image_entry(
            ids[i],
            split,
            scenes[i],
            [(level, c, [ids[j] for j in next(relevant)]) for level, c in captions[i]],
            [ids[j] for j in i2i[i]],
        )
        for i in range(n)
    ]
    write_annotations(annotation_path(dest, split), options, split, entries)


def generate(options: SyntheticOptions, root: str | Path) -> Path:
    """Write the dataset into ``options.cache_dir(root)`` (which must not exist yet)."""
    final = options.cache_dir(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for split in SPLIT_CODES:
            write_split(options, split, tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # another process finished first: its files are identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_complete(cache_dir: Path) -> bool:
    return all(annotation_path(cache_dir, split).is_file() for split in SPLIT_CODES)


def ensure_generated(options: SyntheticOptions, root: str | Path) -> Path:
    """The cache folder for ``options``, generated first if it is missing."""
    final = options.cache_dir(root)
    if is_complete(final):
        return final
    if final.exists() and any(final.iterdir()):
        raise DataError(
            f"{final}: exists but is not a complete SynthScenes folder (no annotations/<split>.json "
            "for every split); delete it to regenerate"
        )
    return generate(options, root)
