"""MedPix 2.0 (registry name ``medpix``), from the ``MedPix-2-0/`` folder of the GitHub
repository CHILab1/MedPix-2.0.

Files read (the data's own keys, not the README's spellings ``location`` / ``Figura part``):

* ``splitted_dataset/descriptions_{train,train_1,train_2,dev,test}.jsonl``: the official
  case-level splits, one image record per line, in the format of ``Descriptions.json``::

      {"Type": "CT", "U_id": "MPX1009", "image": "MPX1009_synpic46283",
       "Description": {"Caption": "...", "Modality": "CT - noncontrast", "Plane": "Coronal",
                       "Figure Part": null, "ACR Codes": "8.-1", "Age": "73", "Sex": "male"},
       "Location": "Genitourinary", "Location Category": "Reproductive and Urinary System"}

* ``images/<image>.png`` (the names carry no extension; some PNGs are RGBA: read as RGB).
* ``Descriptions.json`` (all 2,050 records) and ``Case_topic.json`` (671 cases) are checked
  by ``bench data check``; a run needs only the split files and the images.

Suite split -> MedPix split: train -> ``train`` (or ``train_1`` / ``train_2`` with
``data.options.train_split``), val -> ``dev``, test -> ``test``. Caption: the record's
``Description.Caption`` (some are one word; whitespace stripped). Metadata kept per image
for instruction templates and per-group metrics: ``type`` (``CT`` or ``MR``; Case_topic's
``TAC`` / ``MRI`` spellings are mapped to these), ``modality``, ``plane``, ``location``,
``location_category``, ``case_id`` and ``figure_part`` (optional keys may be absent or
null: the field is then empty). Relevance: a caption is relevant to its own image only;
image to image (``i2i``), the other images of the split from the same case (``U_id``; an
image without a case id, or alone in its case, has none and is skipped as an i2i query).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datamodules.base import CaptionRecord, DataError, ImageRecord, read_json
from datamodules.local import LocalDataModule
from datamodules.paths import InsideRoot
from datamodules.validate import as_list, as_object, get, read_jsonl, text

SPLIT_FILE = "splitted_dataset/descriptions_{split}.jsonl"
TRAIN_SPLITS = ("train", "train_1", "train_2")
#: image type spellings: Descriptions.json says CT / MR, Case_topic.json TAC / MRI
TYPE_NAMES = {"CT": "CT", "TAC": "CT", "MR": "MR", "MRI": "MR"}

LAYOUT_HELP = (
    "Expected the MedPix-2-0/ folder of the GitHub repository CHILab1/MedPix-2.0 "
    "(github.com/CHILab1/MedPix-2.0):\n"
    "  <root>/Descriptions.json  <root>/Case_topic.json  <root>/images/<image>.png\n"
    "  <root>/splitted_dataset/descriptions_{train,train_1,train_2,dev,test}.jsonl"
)


@dataclass(frozen=True)
class MedPixOptions:
    """train_split: which official training split trains (``train`` = ``train_1`` + ``train_2``)."""

    train_split: str = "train"

    def __post_init__(self) -> None:
        if self.train_split not in TRAIN_SPLITS:
            raise ValueError(f"train_split must be one of {TRAIN_SPLITS}, got {self.train_split!r}")


def parse_record(raw: Any, path: Path, where: str, images: Path | InsideRoot) -> ImageRecord:
    """One MedPix image record -> an :class:`ImageRecord` (caption + metadata); its image
    path checked to stay in ``images`` (a folder, or an :class:`InsideRoot` kept across records)."""
    inside = images if isinstance(images, InsideRoot) else InsideRoot(images)
    raw = as_object(raw, path, where)
    image = text(raw, "image", path, where)
    where = f"{where} (image {image!r})"
    kind = text(raw, "Type", path, where)
    description = as_object(get(raw, "Description", dict, path, where), path, f"{where}, field 'Description'")
    d_where = f"{where}, Description"
    caption = text(description, "Caption", path, d_where)
    metadata = {
        "type": TYPE_NAMES.get(kind.upper(), kind),
        "modality": text(description, "Modality", path, d_where, optional=True),
        "plane": text(description, "Plane", path, d_where, optional=True),
        "figure_part": text(description, "Figure Part", path, d_where, optional=True),
        "location": text(raw, "Location", path, where, optional=True),
        "location_category": text(raw, "Location Category", path, where, optional=True),
        "case_id": text(raw, "U_id", path, where, optional=True),
    }
    file_name = image if image.lower().endswith(".png") else f"{image}.png"
    image_path = inside(file_name, source=path, where=where, field="image")
    return ImageRecord(image, image_path, (CaptionRecord(caption),), metadata)


def parse_records(records: Any, path: Path, images: Path) -> list[ImageRecord]:
    """A list of image records (a split file's lines or ``Descriptions.json``). An image that
    appears twice keeps one record with both captions (unless they are the same text)."""
    records = as_list(records, path, "top level")
    by_id: dict[str, ImageRecord] = {}
    inside = InsideRoot(images)
    for i, raw in enumerate(records):
        rec = parse_record(raw, path, f"record {i + 1}", inside)
        if rec.image_id in by_id:
            old = by_id[rec.image_id]
            if rec.captions[0] not in old.captions:
                by_id[rec.image_id] = ImageRecord(old.image_id, old.path, old.captions + rec.captions, old.metadata)
        else:
            by_id[rec.image_id] = rec
    return list(by_id.values())


def parse_case_topics(doc: Any, path: Path) -> dict[str, dict[str, list[str]]]:
    """``Case_topic.json`` -> ``{case id: {"CT": [image names], "MR": [...]}}`` (its
    ``TAC`` / ``MRI`` keys mapped to ``CT`` / ``MR``; ``Case`` and ``Topic`` checked to be
    objects when present)."""
    cases = as_list(doc, path, "top level")
    out: dict[str, dict[str, list[str]]] = {}
    for i, raw in enumerate(cases):
        where = f"case [{i}]"
        raw = as_object(raw, path, where)
        uid = text(raw, "U_id", path, where)
        where = f"case [{i}] ({uid})"
        images: dict[str, list[str]] = {"CT": [], "MR": []}
        for key in ("TAC", "MRI"):
            names = get(raw, key, list, path, where, optional=True, default=[])
            for j, name in enumerate(names):
                if not isinstance(name, str) or not name.strip():
                    raise DataError(f"{path}: {where}: field {key!r}[{j}] must be a non-empty string")
                images[TYPE_NAMES[key]].append(name.strip())
        for key in ("Case", "Topic"):
            get(raw, key, dict, path, where, optional=True)
        out[uid] = images
    return out


def same_case_relevance(records: list[ImageRecord]) -> list[ImageRecord]:
    """Each record with ``i2i_relevant`` = the other images of its case (``case_id``) in ``records``."""
    by_case: dict[str, list[str]] = {}
    for r in records:
        if r.metadata.get("case_id"):
            by_case.setdefault(r.metadata["case_id"], []).append(r.image_id)
    return [
        replace(r, i2i_relevant=tuple(i for i in by_case.get(r.metadata.get("case_id") or "", []) if i != r.image_id))
        for r in records
    ]


class MedPixDataModule(LocalDataModule):
    """MedPix 2.0 CT/MR images with their captions; official case-level splits."""

    name = "medpix"
    layouts: Mapping[str, tuple[str, ...]] = {"medpix-2.0": ("splitted_dataset", "images")}
    layout_help = LAYOUT_HELP
    Options = MedPixOptions
    template_fields = ("type", "modality", "plane", "location", "location_category")
    default_templates = (
        "Find the {type} image that shows: {caption}",
        "Retrieve the {type} scan described as: {caption}",
        "Which {type} image matches this finding? {caption}",
    )

    def split_name(self, split: str) -> str:
        """The MedPix file split for a suite split (val -> dev)."""
        return {"train": self.options.train_split, "val": "dev", "test": "test"}[split]

    def check_split_names(self) -> dict[str, str]:
        return {s: self.split_name(s) for s in ("train", "val", "test")}

    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        self.layout()
        path = self.root / SPLIT_FILE.format(split=self.split_name(split))
        records = parse_records(read_jsonl(path), path, self.root / "images")
        if not records:
            raise DataError(f"{path}: the split file lists no images")
        return same_case_relevance(records), [path]

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "split_files": {s: SPLIT_FILE.format(split=self.split_name(s)) for s in ("train", "val", "test")}
        }

    def extra_checks(self) -> list[tuple[str, bool]]:
        lines = []
        path = self.root / "Descriptions.json"
        if path.is_file():
            described = parse_records(read_json(path), path, self.root / "images")
            lines.append((f"Descriptions.json: {len(described)} image records", True))
        else:
            lines.append(("Descriptions.json: absent (not needed for runs)", True))
        path = self.root / "Case_topic.json"
        if path.is_file():
            cases = parse_case_topics(read_json(path), path)
            n_ct = sum(len(c["CT"]) for c in cases.values())
            n_mr = sum(len(c["MR"]) for c in cases.values())
            lines.append((f"Case_topic.json: {len(cases)} cases ({n_ct} CT and {n_mr} MR image names)", True))
        else:
            lines.append(("Case_topic.json: absent (not needed for runs)", True))
        return lines
