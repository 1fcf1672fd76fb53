"""Generate the SynthScenes files once, atomically, into their cache folder.

Layout of ``<root>/synthscenes-v1-<options hash>/``::

    images/<split>/<image_id>.png     one RGB PNG per image
    annotations/<split>.json          see datamodules/synthetic/annotations.py

Everything is written into a hidden temporary sibling folder that is renamed into place
only once complete, so an interrupted run never leaves a folder that looks finished. The
temporary folder is named by ``benchmark.atomic.temp_sibling``
(``.synthscenes-...tmp-<host>-<pid>-<random>``); one left by a killed run (its process gone)
is removed by the next generation (``benchmark.atomic.clean_stale_temps``). The same options
always give the same bytes: each image depends only on (seed, split, index), PNGs are
written by Pillow with fixed parameters and no metadata, and the JSON is written in a
fixed order. The images and the relevance lists are computed in forked worker processes
(``workers``, default the CPUs available; ``datamodules/synthetic/workers.py``); as each
piece depends only on its own inputs, the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from benchmark.atomic import clean_stale_temps, temp_sibling
from datamodules.base import DataError
from datamodules.synthetic.annotations import annotation_path, image_entry, image_file, write_annotations
from datamodules.synthetic.captions import make_captions
from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.options import SyntheticOptions
from datamodules.synthetic.relevance import SceneIndex, image_relevance
from datamodules.synthetic.render import render_scene
from datamodules.synthetic.scene import Scene, sample_scene
from datamodules.synthetic.seeding import SPLIT_CODES, image_rng
from datamodules.synthetic.workers import fork_map, worker_count

PNG_PARAMS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}


def image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


#: images per rendering task (results come back per task, in order)
CHUNK = 250


def _render(
    task: tuple[SyntheticOptions, str, Path, int, int],
) -> list[tuple[Scene, list[tuple[int, CaptionConstraints]]]]:
    """Sample, draw and save images ``lo..hi-1`` of a split; their scenes and captions."""
    options, split, dest, lo, hi = task
    out = []
    for i in range(lo, hi):
        scene = sample_scene(image_rng(options.seed, split, i, "scene"), options.min_objects, options.max_objects)
        image = render_scene(scene, options.image_size, image_rng(options.seed, split, i, "render"))
        image.save(dest / image_file(split, image_id(split, i)), **PNG_PARAMS)
        out.append((scene, make_captions(scene, image_rng(options.seed, split, i, "captions"))))
    return out


_relevance_job: tuple[SceneIndex, list] | None = None  # set in each worker by _set_relevance_job


def _set_relevance_job(index: SceneIndex, captions: list) -> None:
    global _relevance_job
    _relevance_job = (index, captions)


def _relevance(span: tuple[int, int]) -> list[list[int]]:
    assert _relevance_job is not None, "fork_map runs _set_relevance_job in each worker first"
    index, captions = _relevance_job
    return [index.relevant(c) for c in captions[span[0] : span[1]]]


def _split_relevance(scenes: list[Scene], captions: list[CaptionConstraints], workers: int) -> list[list[int]]:
    """What :func:`~datamodules.synthetic.relevance.caption_relevance` gives, over ``workers``
    processes: each distinct constraint (by ``key()``) checked once."""
    slot: dict[str, int] = {}
    which = [slot.setdefault(c.key(), len(slot)) for c in captions]
    distinct: list[CaptionConstraints | None] = [None] * len(slot)  # every slot is filled below
    for c, i in zip(captions, which):
        distinct[i] = c
    spans = _spans(len(distinct), max(1, -(-len(distinct) // workers)))
    found = [
        r
        for part in fork_map(_relevance, spans, workers, _set_relevance_job, (SceneIndex(scenes), distinct))
        for r in part
    ]
    return [found[i] for i in which]


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def write_split(options: SyntheticOptions, split: str, dest: Path, workers: int = 1) -> None:
    """Render every image of ``split`` under ``dest`` and write its annotation file, with
    the per-image work and the relevance spread over ``workers`` processes (same bytes)."""
    n = options.n_images(split)
    ids = [image_id(split, i) for i in range(n)]
    (dest / "images" / split).mkdir(parents=True, exist_ok=True)
    rendered = [
        r
        for part in fork_map(_render, [(options, split, dest, lo, hi) for lo, hi in _spans(n, CHUNK)], workers)
        for r in part
    ]
    scenes = [scene for scene, _ in rendered]
    captions = [per_image for _, per_image in rendered]
    flat = [c for per_image in captions for _, c in per_image]
    relevant = iter(_split_relevance(scenes, flat, workers))
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


def generate(options: SyntheticOptions, root: str | Path, workers: int | None = None) -> Path:
    """Write the dataset into ``options.cache_dir(root)`` (which must not exist yet), over
    ``workers`` processes (None: the CPUs available, see :func:`worker_count`)."""
    workers = worker_count(workers)
    final = options.cache_dir(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)  # left by killed runs
    tmp = temp_sibling(final)
    try:
        tmp.mkdir()
        for split in SPLIT_CODES:
            write_split(options, split, tmp, workers)
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


def ensure_generated(options: SyntheticOptions, root: str | Path, workers: int | None = None) -> Path:
    """The cache folder for ``options``, generated first if it is missing."""
    final = options.cache_dir(root)
    clean_stale_temps(final)  # left by killed runs, even when another run has finished the folder since
    if is_complete(final):
        return final
    if final.exists() and any(final.iterdir()):
        raise DataError(
            f"{final}: exists but is not a complete SynthScenes folder (no annotations/<split>.json "
            "for every split); delete it to regenerate"
        )
    return generate(options, root, workers)
