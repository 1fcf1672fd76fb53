"""A user's own image-text folder (registry name ``folder``): ``--dataset folder --data-root DIR``.

The folder holds the images (any layout, any format PIL reads) and ONE annotation file,
``annotations.jsonl`` or ``annotations.csv`` at its top (or the file named by
``data.options.annotations``, a path inside the folder ending in ``.jsonl`` or ``.csv``),
with one row per caption: ``image`` (path relative to the folder), ``caption``, and
optionally ``split``, ``instruction`` and ``group`` (``datamodules/folder_annotations.py``).

* **Images**: the rows of one image (its normalized relative path is its id) give its
  captions in file order. Missing or unreadable images are skipped and counted like those of
  the other local datasets (``datamodules/image_checks.py``; ``--strict`` refuses them).
* **Split**: the ``split`` value of an image's rows (they must agree); an image without one
  goes to a split by a stable hash, independent of file order and folder size::

      key = "group:<group id>" for an image with a group, else its path  (split_by "image": its path)
      u = int(sha256(f"folder-split:{split_seed}:{key}").hexdigest()[:16], 16) / 16**16
      train if u < train_fraction, val if u < train_fraction + val_fraction, else test

  ``data.options``: ``train_fraction`` 0.8 and ``val_fraction`` 0.1 (each in (0, 1), sum
  < 1; test gets the rest), ``split_seed`` 0, ``split_by`` ``"group"`` (a group's images
  stay in one split; an image without a group is hashed by its path) or ``"image"`` (every
  image by its path). Grouping by default: images of one group (the same object or scene)
  in both train and test would leak, and an image is an i2i query only if another image of
  its group is in the same split (with a group of 3 hashed image by image, 80/10/10, that
  happens for under 3 % of the groups in test). The definition, its counts and a hash of each
  split's ids are recorded in the result file (``provenance.split_definition``).
* **Relevance**: without groups a caption is relevant to its own image only (t2i, i2t).
  A ``group`` makes every caption of the group relevant to every image of the group in the
  same split (multi-positive t2i and i2t, and multi-positive training targets), and the
  images of a group relevant to each other (``--task i2i`` queries the gallery itself; an
  image alone in its group in the split has no relevant image and is skipped and counted).
  The rows of one image must agree on its group (rows that leave it empty take it from the
  others). A folder with no group at all has no image-image relevance: ``--task retrieval``
  skips the i2i direction, and ``--task i2i`` uses the augmented-view protocol of COCO and
  RSICap (a seeded crop/flip of each image, relevant to its original only).
* **Instructions**: a row's ``instruction`` is its query text, used as is; other captions
  are turned into instructions by the templates (``data.templates``: a list, or the path of
  a templates file, ``datamodules/templates_file.py``; default: :attr:`FolderDataModule.
  default_templates`).
* **Identity**: the run config leaves the data root out, so the annotation file's sha256 is
  the dataset's ``content_identity``: it keys the cached checkpoint and is compared by
  ``--skip-existing`` -- two folders never share a checkpoint, and an edited annotation
  file trains a new one. (Images replaced in place under the same names are not detected:
  use ``--retrain``.)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datamodules.base import CaptionRecord, DataError, ImageRecord
from datamodules.datamodule import SPLITS
from datamodules.folder_annotations import (
    FORMATS,
    OPTIONAL,
    REQUIRED,
    Annotations,
    Problems,
    Row,
    read_annotations,
    relative_inside_root,
)
from datamodules.local import LocalDataModule
from datamodules.paths import InsideRoot

DEFAULT_FILES = ("annotations.jsonl", "annotations.csv")
SPLIT_BY = ("group", "image")
SPLIT_METHOD = (
    "key = 'group:<id>' for an image with a group if split_by is 'group', else the image path; "
    "u = int(sha256('folder-split:{split_seed}:{key}').hexdigest()[:16], 16) / 16**16; "
    "train if u < train_fraction, val if u < train_fraction + val_fraction, else test"
)

LAYOUT_HELP = (
    "Expected a folder of images with ONE annotation file at its top:\n"
    '  <root>/annotations.jsonl   one JSON object per line: {"image": "photos/a.jpg", "caption": "..."}\n'
    "  <root>/annotations.csv     a header line with the columns image,caption, then one row per caption\n"
    f"(or data.options.annotations=<path inside the root>). Columns: {', '.join(REQUIRED)} (required), "
    f"{', '.join(OPTIONAL)} (optional); image paths are relative to the root."
)


@dataclass(frozen=True)
class FolderOptions:
    """``data.options`` of the ``folder`` dataset (see the module docstring)."""

    annotations: str = ""
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    split_seed: int = 0
    split_by: str = "group"

    def __post_init__(self) -> None:
        if self.annotations:
            try:
                relative_inside_root(self.annotations)
            except ValueError as e:
                raise ValueError(
                    f"annotations must be a file inside the data root, got {self.annotations!r}: {e}"
                ) from e
            if Path(self.annotations).suffix.lower() not in FORMATS:
                raise ValueError(f"annotations must end in {' or '.join(FORMATS)}, got {self.annotations!r}")
        if not (0 < self.train_fraction < 1 and 0 < self.val_fraction < 1):
            raise ValueError(
                f"train_fraction and val_fraction must lie in (0, 1), got {self.train_fraction} and {self.val_fraction}"
            )
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError("train_fraction + val_fraction must be < 1 (the test split gets the rest)")
        if not 0 <= self.split_seed < 2**63:
            raise ValueError(f"split_seed must be in [0, 2**63), got {self.split_seed}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {self.split_by!r}")

    @property
    def test_fraction(self) -> float:
        return round(1 - self.train_fraction - self.val_fraction, 12)


def hash_split(key: str, options: FolderOptions) -> str:
    """The split of an image without a ``split`` value (see the module docstring)."""
    digest = hashlib.sha256(f"folder-split:{options.split_seed}:{key}".encode()).hexdigest()
    u = int(digest[:16], 16) / 16**16
    if u < options.train_fraction:
        return "train"
    return "val" if u < options.train_fraction + options.val_fraction else "test"


@dataclass
class _Image:
    rows: list[Row]
    split: str | None = None
    split_line: int = 0
    group: str | None = None
    group_line: int = 0


@dataclass(frozen=True)
class FolderIndex:
    """The annotation file turned into records per split."""

    annotations: Annotations
    records: dict[str, list[ImageRecord]]
    groups: dict[str, str]  # image id -> group id (images with a group only)
    hashed: int  # images whose split the hash decided

    def n_groups(self, split: str | None = None) -> int:
        ids = self.groups if split is None else {r.image_id for r in self.records[split]}
        return len({g for i, g in self.groups.items() if i in ids})


def build_index(ann: Annotations, root: Path, options: FolderOptions) -> FolderIndex:
    """Records per split from checked rows: an image's rows must agree on its split and group
    (a conflict is a DataError naming both lines); relevance through groups within a split."""
    images: dict[str, _Image] = {}
    problems = Problems(ann.path)

    def conflict(row: Row, field: str, have: str, line: int) -> None:
        problems.add(
            row.line,
            f"field {field!r} is {getattr(row, field)!r}, but line {line} gives image "
            f"{row.image!r} the {field} {have!r} (an image has one {field})",
        )

    for row in ann.rows:
        im = images.get(row.image)
        if im is None:
            im = images[row.image] = _Image([])
        im.rows.append(row)
        if row.split is not None:
            if im.split is None:
                im.split, im.split_line = row.split, row.line
            elif im.split != row.split:
                conflict(row, "split", im.split, im.split_line)
        if row.group is not None:
            if im.group is None:
                im.group, im.group_line = row.group, row.line
            elif im.group != row.group:
                conflict(row, "group", im.group, im.group_line)
    problems.raise_if_any()
    split_of: dict[str, str] = {}
    hashed = 0
    for image_id, im in images.items():
        if im.split is not None:
            split_of[image_id] = im.split
            continue
        key = f"group:{im.group}" if options.split_by == "group" and im.group is not None else image_id
        split_of[image_id] = hash_split(key, options)
        hashed += 1
    members: dict[tuple[str, str], list[str]] = {}
    for image_id, im in images.items():
        if im.group is not None:
            members.setdefault((split_of[image_id], im.group), []).append(image_id)
    records: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    inside = InsideRoot(root)  # the suite's one path check: also refuses a link that leaves the folder
    for image_id, im in images.items():
        inside(image_id, source=ann.path, where=f"line {im.rows[0].line}", field="image")
        captions = tuple(CaptionRecord(r.caption, instruction=r.instruction) for r in im.rows)
        relevant = i2i = None
        if im.group is not None:
            group = tuple(members[(split_of[image_id], im.group)])
            relevant = (group,) * len(captions)
            i2i = tuple(i for i in group if i != image_id)
        records[split_of[image_id]].append(
            ImageRecord(image_id, root / image_id, captions, relevant_images=relevant, i2i_relevant=i2i)
        )
    groups = {i: im.group for i, im in images.items() if im.group is not None}
    return FolderIndex(ann, records, groups, hashed)


class FolderDataModule(LocalDataModule):
    """A user's image-text folder (see the module docstring)."""

    name = "folder"
    layout_help = LAYOUT_HELP
    Options = FolderOptions
    default_templates = (
        "Find an image of {caption}",
        "Retrieve the image that shows: {caption}",
        "Show me a picture where {caption}",
        "Search for an image matching: {caption}",
    )

    def __init__(self, config, seed: int = 0) -> None:
        super().__init__(config, seed)
        name = self.options.annotations
        self.layouts = (
            {FORMATS[Path(name).suffix.lower()]: (name,)}
            if name
            else {FORMATS[Path(f).suffix]: (f,) for f in DEFAULT_FILES}
        )
        self._index: FolderIndex | None = None

    # -- the folder ----------------------------------------------------------------------
    def layout(self) -> str:
        """``"jsonl"`` or ``"csv"``; a DataError when the root is absent, holds no annotation
        file, or holds both default names (ambiguous: name one with data.options.annotations)."""
        if self._layout is None and not self.options.annotations and self.config.root:
            both = [f for f in DEFAULT_FILES if (self.root / f).exists()]
            if len(both) > 1:
                raise DataError(
                    f"{self.name}: {self.root} holds both {' and '.join(both)}: keep one, or name the one "
                    "to read with --set data.options.annotations=FILE"
                )
        return super().layout()

    def annotation_path(self) -> Path:
        return self.root / self.layouts[self.layout()][0]

    def index(self) -> FolderIndex:
        if self._index is None:
            self._index = build_index(read_annotations(self.annotation_path()), self.root, self.options)
        return self._index

    # -- the DataModule contract -----------------------------------------------------------
    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        return list(self.index().records[split]), [self.annotation_path()]

    def records(self, split: str) -> list[ImageRecord]:
        if not self.annotated_records(split):
            index = self.index()
            counts = ", ".join(f"{s} {len(index.records[s])}" for s in SPLITS)
            raise DataError(
                f"{self.name}: split {split!r} has no image ({counts} images in {index.annotations.path}): give some "
                f"rows split={split}, or change the hash split (data.options train_fraction, val_fraction, split_seed)"
            )
        return super().records(split)

    @property
    def i2i_queries(self) -> str:  # type: ignore[override]
        """``gallery`` (relevance through groups) when any image has a group, else ``augmented_view``."""
        return "gallery" if self.index().groups else "augmented_view"

    def content_identity(self) -> dict[str, Any]:
        return {"annotations_sha256": self.index().annotations.sha256}

    def describe(self) -> dict[str, Any]:
        index = self.index()
        ids = {s: [r.image_id for r in index.records[s]] for s in SPLITS}
        definition = {
            "method": SPLIT_METHOD,
            **asdict(self.options),
            "test_fraction": self.options.test_fraction,
            "hashed_images": index.hashed,
            "given_images": sum(len(v) for v in ids.values()) - index.hashed,
            "counts": {s: len(v) for s, v in ids.items()},
            "image_ids_sha256": {s: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest() for s, v in ids.items()},
        }
        return super().describe() | {
            "annotation_file": str(self.layouts[self.layout()][0]),
            "split_definition": definition,
            "groups": {"n_groups": index.n_groups(), "n_grouped_images": len(index.groups)},
            "content_identity": self.content_identity(),
        }

    # -- bench data check -------------------------------------------------------------------
    def extra_checks(self) -> list[tuple[str, bool]]:
        index = self.index()
        ann, o = index.annotations, self.options
        n_images = sum(len(v) for v in index.records.values())
        ignored = f"; ignored columns: {', '.join(ann.ignored)}" if ann.ignored else ""
        texts = [
            (
                f"annotations: {ann.path.name} ({ann.format}), {len(ann.rows)} rows (captions) of {n_images} images; "
                f"columns: {', '.join(ann.columns)}{ignored}"
            ),
            (
                f"split: given for {n_images - index.hashed} images, hash split for {index.hashed} (split_by "
                f"{o.split_by}, seed {o.split_seed}, fractions {o.train_fraction}/{o.val_fraction}/{o.test_fraction})"
            ),
        ]
        if index.groups:
            per_split = ", ".join(f"{s} {index.n_groups(s)}" for s in SPLITS)
            queries = ", ".join(f"{s} {sum(bool(r.i2i_relevant) for r in index.records[s])}" for s in SPLITS)
            texts.append(
                f"groups: {index.n_groups()} over {len(index.groups)} images ({per_split}); i2i relevance "
                f"through groups; i2i queries (images with another image of their group in the split): "
                f"{queries}"
            )
        else:
            texts.append(
                "groups: none (no group column or values): no i2i relevance; --task i2i uses augmented "
                "views of each image"
            )
        with_instruction = sum(r.instruction is not None for r in ann.rows)
        if with_instruction:
            texts.append(f"instructions: {with_instruction} rows give their own instruction")
        empty = [
            f"split {s!r} is empty: a run that uses it fails (give rows split={s}, or change the hash split's "
            "fractions or seed)"
            for s in SPLITS
            if not index.records[s]
        ]
        return [(t, True) for t in texts] + [(t, False) for t in empty]
