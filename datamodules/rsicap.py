"""RSICap (registry name ``rsicap``) and the RSIEval reader, from the ``dataset/`` folder of
the RSGPT repository (Lavender105/RSGPT).

* ``RSICap/captions.json``: ``{"annotations": [{"image_id": "0", "filename":
  "P0378_0001.png", "text_input": "...", "text_output": "This is an aerial image ..."}]}``,
  2,585 images with one caption each (``text_output``); images in ``RSICap/images/``. The
  loader is driven by captions.json, never by the folder listing. ``<root>`` may also be
  the ``RSICap/`` folder itself.
* ``RSIEval/annotations.json``: 100 images with ``filename``, ``caption`` and ``qa_pairs``
  (``question``, ``answer``, ``type``); read by :func:`read_rsieval` for the VQA mode
  (empty questions skipped), not used by ``bench run``.

RSICap has no official split, so the suite defines one, deterministic and independent of
file order or dataset size: an image goes to train, val or test by a stable hash of its
``image_id``::

    u = int(sha256(f"rsicap-split:{split_seed}:{image_id}")[:16 hex digits], 16) / 16**16
    train if u < train_fraction, val if u < train_fraction + val_fraction, else test

with ``data.options`` ``train_fraction`` 0.8, ``val_fraction`` 0.1 (test gets the rest)
and ``split_seed`` 0 by default. The definition, its parameters, the per-split counts and
a hash of each split's ids are recorded in every result file (``provenance.split_definition``).
Images derive from DOTA (some grayscale or panchromatic; read as RGB). DOTA's terms:
academic use only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datamodules.base import CaptionRecord, DataError, ImageRecord, read_json
from datamodules.local import LocalDataModule
from datamodules.paths import InsideRoot
from datamodules.validate import as_list, as_object, get, identifier, text

SPLIT_METHOD = (
    "u = int(sha256('rsicap-split:{split_seed}:{image_id}').hexdigest()[:16], 16) / 16**16; "
    "train if u < train_fraction, val if u < train_fraction + val_fraction, else test"
)

LAYOUT_HELP = (
    "Expected the dataset/ folder of the RSGPT repository (github.com/Lavender105/RSGPT):\n"
    "  <root>/RSICap/captions.json  <root>/RSICap/images/\n"
    "  <root>/RSIEval/annotations.json  <root>/RSIEval/images/  (optional, for VQA)\n"
    "or the RSICap/ folder itself (<root>/captions.json  <root>/images/)."
)


@dataclass(frozen=True)
class RSICapOptions:
    """The suite's RSICap split: fractions of images in train and val (test: the rest) and
    the seed of the hash that assigns them."""

    train_fraction: float = 0.8
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.train_fraction < 1 and 0 < self.val_fraction < 1):
            raise ValueError("train_fraction and val_fraction must lie in (0, 1)")
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError("train_fraction + val_fraction must be < 1 (the test split gets the rest)")
        if self.split_seed < 0:
            raise ValueError("split_seed must be >= 0")

    @property
    def test_fraction(self) -> float:
        return round(1 - self.train_fraction - self.val_fraction, 12)


def split_of(image_id: str, options: RSICapOptions) -> str:
    """The suite split of an RSICap image (see the module docstring)."""
    digest = hashlib.sha256(f"rsicap-split:{options.split_seed}:{image_id}".encode()).hexdigest()
    u = int(digest[:16], 16) / 16**16
    if u < options.train_fraction:
        return "train"
    return "val" if u < options.train_fraction + options.val_fraction else "test"


def parse_captions(doc: Any, path: Path, images: Path) -> list[ImageRecord]:
    """RSICap ``captions.json`` -> one record per image (all, in file order). Two entries for
    the same file keep the first ``image_id`` and both captions."""
    doc = as_object(doc, path, "top level")
    entries = as_list(get(doc, "annotations", list, path, "top level"), path, "field 'annotations'")
    by_file: dict[str, tuple[str, list[CaptionRecord]]] = {}
    ids: dict[str, int] = {}
    inside = InsideRoot(images)
    for i, raw in enumerate(entries):
        where = f"annotations[{i}]"
        raw = as_object(raw, path, where)
        image_id = identifier(raw, "image_id", path, where)
        where = f"annotations[{i}] (image_id {image_id!r})"
        if image_id in ids:
            raise DataError(f"{path}: {where}: image_id repeats annotations[{ids[image_id]}]")
        ids[image_id] = i
        filename = text(raw, "filename", path, where)
        inside(filename, source=path, where=where, field="filename")
        caption = CaptionRecord(text(raw, "text_output", path, where))
        get(raw, "text_input", str, path, where, optional=True)
        if filename in by_file:
            by_file[filename][1].append(caption)
        else:
            by_file[filename] = (image_id, [caption])
    return [ImageRecord(image_id, images / name, tuple(caps)) for name, (image_id, caps) in by_file.items()]


# -- RSIEval ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    type: str  # presence, quantity, color, ab_position, re_position, reasoning, image, ...


@dataclass(frozen=True)
class RSIEvalImage:
    filename: str
    path: Path
    caption: str
    qa_pairs: tuple[QAPair, ...]


@dataclass(frozen=True)
class RSIEval:
    """RSIEval: images with a caption and question-answer pairs (empty questions skipped)."""

    images: tuple[RSIEvalImage, ...]
    n_skipped_questions: int

    @property
    def n_qa_pairs(self) -> int:
        return sum(len(im.qa_pairs) for im in self.images)

    def qa_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for im in self.images:
            for qa in im.qa_pairs:
                counts[qa.type] = counts.get(qa.type, 0) + 1
        return dict(sorted(counts.items()))


def parse_rsieval(doc: Any, path: Path, images: Path) -> RSIEval:
    doc = as_object(doc, path, "top level")
    entries = as_list(get(doc, "annotations", list, path, "top level"), path, "field 'annotations'")
    out, skipped = [], 0
    inside = InsideRoot(images)
    for i, raw in enumerate(entries):
        where = f"annotations[{i}]"
        raw = as_object(raw, path, where)
        filename = text(raw, "filename", path, where)
        where = f"annotations[{i}] ({filename})"
        image_path = inside(filename, source=path, where=where, field="filename")
        caption = text(raw, "caption", path, where)
        pairs = []
        for j, qa in enumerate(get(raw, "qa_pairs", list, path, where)):
            q_where = f"{where}, qa_pairs[{j}]"
            qa = as_object(qa, path, q_where)
            question = get(qa, "question", str, path, q_where).strip()
            if not question:
                skipped += 1
                continue
            answer = get(qa, "answer", str, path, q_where).strip()
            kind = get(qa, "type", str, path, q_where, optional=True, default="").strip()
            pairs.append(QAPair(question, answer, kind))
        out.append(RSIEvalImage(filename, image_path, caption, tuple(pairs)))
    return RSIEval(tuple(out), skipped)


def read_rsieval(path: Path, images: Path | None = None) -> RSIEval:
    """Read RSIEval ``annotations.json`` (images default to ``images/`` beside it)."""
    path = Path(path)
    return parse_rsieval(read_json(path), path, Path(images) if images else path.parent / "images")


# -- the DataModule ----------------------------------------------------------------------
class RSICapDataModule(LocalDataModule):
    """RSICap retrieval on the suite's hash split of ``image_id`` (see the module docstring)."""

    name = "rsicap"
    layouts: Mapping[str, tuple[str, ...]] = {
        "rsgpt dataset/": ("RSICap/captions.json",),
        "RSICap/": ("captions.json",),
    }
    layout_help = LAYOUT_HELP
    i2i_queries = "augmented_view"  # nothing relates two images: "same image" (datamodules/i2i.py)
    Options = RSICapOptions
    default_templates = (
        "Find the remote sensing image that shows: {caption}",
        "Retrieve the aerial image described as: {caption}",
        "Which satellite image matches this description? {caption}",
    )

    def __init__(self, config, seed: int = 0) -> None:
        super().__init__(config, seed)
        self._all: list[ImageRecord] | None = None

    @property
    def rsicap_dir(self) -> Path:
        return self.root / "RSICap" if self.layout() == "rsgpt dataset/" else self.root

    def _all_records(self) -> list[ImageRecord]:
        if self._all is None:
            path = self.rsicap_dir / "captions.json"
            self._all = parse_captions(read_json(path), path, self.rsicap_dir / "images")
        return self._all

    def read_split(self, split: str) -> tuple[list[ImageRecord], list[Path]]:
        records = [r for r in self._all_records() if split_of(r.image_id, self.options) == split]
        path = self.rsicap_dir / "captions.json"
        if not records:
            raise DataError(f"{path}: the suite's {split!r} split is empty ({len(self._all_records())} images in all)")
        return records, [path]

    def describe(self) -> dict[str, Any]:
        by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for r in self._all_records():
            by_split[split_of(r.image_id, self.options)].append(r.image_id)
        definition = {
            "method": SPLIT_METHOD,
            **asdict(self.options),
            "test_fraction": self.options.test_fraction,
            "counts": {s: len(v) for s, v in by_split.items()},
            "image_ids_sha256": {
                s: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest() for s, v in by_split.items()
            },
        }
        return super().describe() | {"split_definition": definition}

    def rsieval(self) -> RSIEval | None:
        """RSIEval beside RSICap, if present (``<root>/RSIEval/annotations.json``)."""
        path = self.root / "RSIEval" / "annotations.json"
        return read_rsieval(path) if self.layout() == "rsgpt dataset/" and path.is_file() else None

    def extra_checks(self) -> list[tuple[str, bool]]:
        d = self.describe()["split_definition"]
        lines = [
            (
                (
                    f"split: the suite's hash split of image_id (seed {d['split_seed']}; fractions "
                    f"{d['train_fraction']}/{d['val_fraction']}/{d['test_fraction']})"
                ),
                True,
            )
        ]
        ev = self.rsieval()
        if ev is None:
            return lines + [("RSIEval: absent (optional, for VQA)", True)]
        missing = [im.filename for im in ev.images if not im.path.is_file()]
        lines.append(
            (
                f"RSIEval: {len(ev.images)} images, {ev.n_qa_pairs} QA pairs "
                f"({ev.n_skipped_questions} empty questions skipped), {len(missing)} images missing"
                + (f": {', '.join(missing[:10])}" if missing else ""),
                not missing,
            )
        )
        return lines
