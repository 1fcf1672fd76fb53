"""The SynthScenes annotation files: their format, how they are written, how they are read.

One JSON file per split, ``<cache>/annotations/<split>.json``, written compactly
(``separators=(",", ":")``, keys in the order below, ASCII only) so that the same options
always give the same bytes::

    {
      "format": "synthscenes",
      "version": 1,                       # GENERATOR_VERSION
      "options": {"n_train": 4000, "n_val": 500, "n_test": 1000, "image_size": 64,
                  "seed": 0, "min_objects": 1, "max_objects": 4},
      "split": "test",
      "images": [
        {
          "image_id": "test_000000",
          "file": "images/test/test_000000.png",      # relative to the cache folder
          "scene": {...},                               # see datamodules/synthetic/scene.py
          "captions": [
            {
              "text": "a large red circle",
              "complexity": 2,                          # level 1..5
              "constraints": {...},                     # see constraints.py
              "relevant_image_ids": ["test_000000", "test_000417", ...]
            },
            ...                                         # one caption per level
          ],
          "i2i_relevant_image_ids": ["test_000093", ...]
        },
        ...
      ]
    }

``relevant_image_ids``: every image of the same split whose scene satisfies the caption's
constraints (sorted, always including the caption's own image).
``i2i_relevant_image_ids``: every *other* image of the split whose scene holds the same set
of (colour, shape) object types (sorted; may be empty).

:func:`read_annotations` checks every field and raises :class:`~datamodules.base.DataError`
naming the file, the record and the field. A process parses each file once: later calls
for the same path with the same bytes (checked by SHA-256) get the records parsed the first
time, in a new list (the records are shared: treat them as read-only). ``bench run --model
ours`` reads the training split for CLIP, BLIP2 and ours.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules.base import CaptionRecord, DataError, ImageRecord, read_json
from datamodules.paths import InsideRoot
from datamodules.synthetic.constraints import CaptionConstraints
from datamodules.synthetic.options import FORMAT_NAME, GENERATOR_VERSION, SyntheticOptions
from datamodules.synthetic.scene import Scene

TOP_FIELDS: dict[str, type] = {"format": str, "version": int, "options": dict, "split": str, "images": list}
IMAGE_FIELDS: dict[str, type] = {
    "image_id": str,
    "file": str,
    "scene": dict,
    "captions": list,
    "i2i_relevant_image_ids": list,
}
CAPTION_FIELDS: dict[str, type] = {"text": str, "complexity": int, "constraints": dict, "relevant_image_ids": list}


def annotation_path(cache_dir: Path, split: str) -> Path:
    return Path(cache_dir) / "annotations" / f"{split}.json"


def image_file(split: str, image_id: str) -> str:
    """The image's path relative to the cache folder."""
    return f"images/{split}/{image_id}.png"


def image_entry(
    image_id: str,
    split: str,
    scene: Scene,
    captions: Sequence[tuple[int, CaptionConstraints, list[str]]],
    i2i_ids: Sequence[str],
) -> dict[str, Any]:
    """One image's record; ``captions`` holds (level, constraints, relevant image ids)."""
    return {
        "image_id": image_id,
        "file": image_file(split, image_id),
        "scene": scene.to_json(),
        "captions": [
            {"text": c.text(), "complexity": level, "constraints": c.to_json(), "relevant_image_ids": list(ids)}
            for level, c, ids in captions
        ],
        "i2i_relevant_image_ids": list(i2i_ids),
    }


def write_annotations(path: Path, options: SyntheticOptions, split: str, images: Sequence[dict[str, Any]]) -> None:
    document = {
        "format": FORMAT_NAME,
        "version": GENERATOR_VERSION,
        "options": options.to_dict(),
        "split": split,
        "images": list(images),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(json.dumps(document, ensure_ascii=True, separators=(",", ":")) + "\n")


# -- reading ---------------------------------------------------------------------------
def _require(record: Any, spec: Mapping[str, type], where: str, path: Path) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in spec.items():
        if key not in record:
            raise DataError(f"{path}: {where}: missing field {key!r}")
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{path}: {where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")


def _id_list(values: list, known: Mapping[str, int], where: str, field: str, path: Path) -> tuple[str, ...]:
    for v in values:
        if not isinstance(v, str) or v not in known:
            raise DataError(f"{path}: {where}: field {field!r} names {v!r}, which is not an image of this split")
    return tuple(values)


def _caption(raw: Any, where: str, path: Path) -> CaptionRecord:
    _require(raw, CAPTION_FIELDS, where, path)
    try:
        CaptionConstraints.from_json(raw["constraints"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: {where}: field 'constraints' is invalid ({e})") from e
    return CaptionRecord(text=raw["text"], complexity=raw["complexity"], constraints=raw["constraints"])


#: records already parsed in this process, by (absolute path, split, SHA-256 of the bytes)
_PARSED: dict[tuple[str, str, str], list[ImageRecord]] = {}
_PARSED_MAX = 8


def read_annotations(path: Path, split: str) -> list[ImageRecord]:
    """Read and check one split's annotation file; image paths come back absolute."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:  # unreadable: let the checked reader say why
        return _read_annotations(path, split)
    key = (str(path.resolve()), split, hashlib.sha256(data).hexdigest())
    if key not in _PARSED:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = _read_annotations(path, split, data)
    return list(_PARSED[key])


def _read_annotations(path: Path, split: str, data: bytes | None = None) -> list[ImageRecord]:
    doc = read_json(path, data)
    _require(doc, TOP_FIELDS, "top level", path)
    expected = {"format": FORMAT_NAME, "version": GENERATOR_VERSION, "split": split}
    for key, value in expected.items():
        if doc[key] != value:
            raise DataError(f"{path}: top level: field {key!r} is {doc[key]!r}, expected {value!r}")
    base = path.resolve().parent.parent
    images = doc["images"]
    for i, raw in enumerate(images):
        _require(raw, IMAGE_FIELDS, f"images[{i}]", path)
    known = {raw["image_id"]: i for i, raw in enumerate(images)}
    if len(known) != len(images):
        raise DataError(f"{path}: field 'image_id' has duplicate values")
    records = []
    inside = InsideRoot(base)
    for i, raw in enumerate(images):
        where = f"images[{i}] (image_id {raw['image_id']!r})"
        try:
            Scene.from_json(raw["scene"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: {where}: field 'scene' is invalid ({e!r})") from e
        if not raw["captions"]:
            raise DataError(f"{path}: {where}: field 'captions' is empty")
        captions, relevant = [], []
        for j, cap in enumerate(raw["captions"]):
            cap_where = f"{where}, captions[{j}]"
            captions.append(_caption(cap, cap_where, path))
            ids = _id_list(cap["relevant_image_ids"], known, cap_where, "relevant_image_ids", path)
            if raw["image_id"] not in ids:
                raise DataError(f"{path}: {cap_where}: field 'relevant_image_ids' lacks the caption's own image")
            relevant.append(ids)
        records.append(
            ImageRecord(
                image_id=raw["image_id"],
                path=inside(raw["file"], source=path, where=where, field="file"),
                captions=tuple(captions),
                metadata={"scene": raw["scene"]},
                relevant_images=tuple(relevant),
                i2i_relevant=_id_list(raw["i2i_relevant_image_ids"], known, where, "i2i_relevant_image_ids", path),
            )
        )
    return records
