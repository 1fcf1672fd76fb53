"""COCO with the Karpathy split (registry name ``coco``), from a local folder.

Two packagings are read, detected automatically (Karpathy's wins if both are present):

* Karpathy's ``dataset_coco.json`` (``caption_datasets.zip``): ``{"images": [{"filepath":
  "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "split":
  "test", "sentences": [{"raw": "A man ... "}, ...]}, ...]}``; the image is
  ``<root>/<filepath>/<filename>`` (or ``<root>/images/<filepath>/<filename>``).
* LAVIS/BLIP: ``<root>/annotations/coco_karpathy_{train,val,test}.json`` with images under
  ``<root>/images/`` (``<root>`` may also be the folder above ``coco/``). The train file has
  one entry per caption (``{"caption", "image", "image_id"}``); val/test one entry per image
  (``{"image", "caption": [...]}``, no id: the COCO id is read from the file name).

Splits: train = Karpathy ``train`` + ``restval`` (113,287 images), val 5,000, test 5,000.
Every caption of an image is used (5 to 7), surrounding spaces stripped (``raw`` often ends
in one). Image ids are the COCO ids as strings in both packagings. Relevance: a caption is
relevant to its own image only (the LAVIS convention).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.base import CaptionRecord, DataError, ImageRecord, read_json
from datamodules.local import LocalDataModule
from datamodules.paths import InsideRoot
from datamodules.validate import as_list, as_object, get, identifier, text

KARPATHY_FILE = "dataset_coco.json"
LAVIS_FILE = "annotations/coco_karpathy_{split}.json"
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_COCO_ID = re.compile(r"(\d+)\.[A-Za-z]+$")

LAYOUT_HELP = (
    "Expected either Karpathy's packaging:\n"
    "  <root>/dataset_coco.json  (from caption_datasets.zip)\n  <root>/train2014/*.jpg  <root>/val2014/*.jpg\n"
    "or the LAVIS/BLIP packaging:\n"
    "  <root>/annotations/coco_karpathy_{train,val,test}.json\n  <root>/images/train2014/  <root>/images/val2014/\n"
    "Get the images from cocodataset.org (2014 train/val) and the split file from Karpathy's "
    "caption_datasets.zip or the LAVIS/BLIP annotation files (coco_karpathy_*.json)."
)


def coco_id(file_name: str) -> str | None:
    """The COCO id in an image file name (``COCO_val2014_000000391895.jpg`` -> ``"391895"``)."""
    m = _COCO_ID.search(file_name)
    return str(int(m.group(1))) if m else None


def _caption(value: Any, path: Path, where: str) -> CaptionRecord:
    if not isinstance(value, str):
        raise DataError(f"{path}: {where}: must be a string, got {type(value).__name__}")
    stripped = value.strip()
    if not stripped:
        raise DataError(f"{path}: {where}: empty caption")
    return CaptionRecord(stripped)


def parse_karpathy(doc: Any, path: Path, image_base: Path) -> dict[str, list[ImageRecord]]:
    """Karpathy's ``dataset_coco.json`` -> records per suite split (restval joins train)."""
    doc = as_object(doc, path, "top level")
    images = as_list(get(doc, "images", list, path, "top level"), path, "field 'images'")
    out: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    seen: dict[str, int] = {}
    inside = InsideRoot(image_base)
    for i, raw in enumerate(images):
        where = f"images[{i}]"
        raw = as_object(raw, path, where)
        filepath = text(raw, "filepath", path, where)
        filename = text(raw, "filename", path, where)
        where = f"images[{i}] ({filename})"
        image_path = inside(filepath, filename, source=path, where=where, field="filepath/filename")
        split = get(raw, "split", str, path, where)
        if split not in KARPATHY_SPLITS:
            raise DataError(f"{path}: {where}: field 'split' is {split!r}, expected one of {sorted(KARPATHY_SPLITS)}")
        if "cocoid" in raw:
            image_id = identifier(raw, "cocoid", path, where)
        else:
            image_id = coco_id(filename) or f"{filepath}/{filename}"
        if image_id in seen:
            raise DataError(f"{path}: {where}: image id {image_id!r} repeats images[{seen[image_id]}]")
        seen[image_id] = i
        sentences = get(raw, "sentences", list, path, where)
        if not sentences:
            raise DataError(f"{path}: {where}: field 'sentences' is empty")
        captions = []
        for j, s in enumerate(sentences):
            s_where = f"{where}, sentences[{j}]"
            captions.append(CaptionRecord(text(as_object(s, path, s_where), "raw", path, s_where)))
        out[KARPATHY_SPLITS[split]].append(ImageRecord(image_id, image_path, tuple(captions), {"split": split}))
    return out


def _lavis_image(raw: dict, path: Path, where: str, inside: InsideRoot) -> str:
    image = text(raw, "image", path, where)
    inside(image, source=path, where=where, field="image")
    return image


def parse_lavis_train(doc: Any, path: Path, image_base: Path) -> list[ImageRecord]:
    """LAVIS ``coco_karpathy_train.json`` (one entry per caption) -> one record per image,
    its captions in file order."""
    entries = as_list(doc, path, "top level")
    by_image: dict[str, tuple[str, list[CaptionRecord]]] = {}
    inside = InsideRoot(image_base)
    for i, raw in enumerate(entries):
        where = f"entry [{i}]"
        raw = as_object(raw, path, where)
        image = _lavis_image(raw, path, where, inside)
        where = f"entry [{i}] ({image})"
        caption = _caption(get(raw, "caption", str, path, where), path, f"{where}, field 'caption'")
        if image not in by_image:
            if "image_id" in raw:
                identifier(raw, "image_id", path, where)  # checked, but the file name gives the id
            by_image[image] = (coco_id(image) or image, [])
        by_image[image][1].append(caption)
    return _records(by_image, path, image_base)


def parse_lavis_eval(doc: Any, path: Path, image_base: Path) -> list[ImageRecord]:
    """LAVIS ``coco_karpathy_{val,test}.json`` (one entry per image, a caption list)."""
    entries = as_list(doc, path, "top level")
    by_image: dict[str, tuple[str, list[CaptionRecord]]] = {}
    inside = InsideRoot(image_base)
    for i, raw in enumerate(entries):
        where = f"entry [{i}]"
        raw = as_object(raw, path, where)
        image = _lavis_image(raw, path, where, inside)
        where = f"entry [{i}] ({image})"
        if image in by_image:
            raise DataError(f"{path}: {where}: image listed twice")
        captions = get(raw, "caption", (list, str), path, where)
        captions = [captions] if isinstance(captions, str) else captions
        if not captions:
            raise DataError(f"{path}: {where}: field 'caption' is empty")
        by_image[image] = (
            coco_id(image) or image,
            [_caption(c, path, f"{where}, caption[{j}]") for j, c in enumerate(captions)],
        )
    return _records(by_image, path, image_base)


def _records(by_image: dict[str, tuple[str, list[CaptionRecord]]], path: Path, base: Path) -> list[ImageRecord]:
    seen: dict[str, str] = {}
    records = []
    for image, (image_id, captions) in by_image.items():
        if image_id in seen:
            raise DataError(f"{path}: images {seen[image_id]!r} and {image!r} have the same COCO id {image_id}")
        seen[image_id] = image
        records.append(ImageRecord(image_id, base / image, tuple(captions)))
    return records


class CocoKarpathyDataModule(LocalDataModule):
    """COCO-Karpathy retrieval: 5k test images, all their captions (~25k queries)."""

    name = "coco"
    layouts: Mapping[str, tuple[str, ...]] = {
        "karpathy": (KARPATHY_FILE,),
        "lavis": ("annotations/coco_karpathy_test.json",),
        "lavis (coco/ subfolder)": ("coco/annotations/coco_karpathy_test.json",),
    }
    layout_help = LAYOUT_HELP
    i2i_queries = "augmented_view"  # nothing relates two images: "same image" (datamodules/i2i.py)
    default_templates = (
        "Find an image of {caption}",
        "Retrieve the photo that shows: {caption}",
        "Show me a picture where {caption}",
        "Search for an image matching: {caption}",
    )

    def __init__(self, config, seed: int = 0) -> None:
        super().__init__(config, seed)
        self._karpathy: dict[str, list[ImageRecord]] | None = None

    @property
    def base(self) -> Path:
        """The folder holding ``annotations/`` (LAVIS) or ``dataset_coco.json`` (Karpathy)."""
        return self.root / "coco" if self.layout() == "lavis (coco/ subfolder)" else self.root

    def _image_base(self) -> Path:
        base = self.base
        if self.layout() == "karpathy" and any((base / d).is_dir() for d in ("train2014", "val2014")):
            return base
        return base / "images" if (base / "images").is_dir() else base

    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        if self.layout() == "karpathy":
            path = self.base / KARPATHY_FILE
            if self._karpathy is None:  # the file holds every split (~140 MB): parse it once
                self._karpathy = parse_karpathy(read_json(path), path, self._image_base())
            records = self._karpathy[split]
            if not records:
                raise DataError(f"{path}: no image has split {split!r}" + (" or 'restval'" if split == "train" else ""))
            return records, [path]
        path = self.base / LAVIS_FILE.format(split=split)
        parse = parse_lavis_train if split == "train" else parse_lavis_eval
        records = parse(read_json(path), path, self._image_base())
        if not records:
            raise DataError(f"{path}: the file lists no images")
        return records, [path]
