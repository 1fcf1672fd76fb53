"""The data contract every dataset honours: evaluation structures, training pairs, errors.

Nothing here knows about models. A dataset turns its on-disk annotations into
:class:`ImageRecord` lists (one per split); from those this module builds

* :class:`EvalSet` -- the gallery images, the queries (instruction text, raw caption,
  complexity level, source image) and exact multi-positive relevance for the three
  retrieval directions (``t2i``, ``i2t``, ``i2i``), stored as CSR index arrays;
* the torch datasets that the DataModule serves (training pairs, gallery images, query
  texts), each yielding its global index so that distributed evaluation can de-duplicate
  the padding that distributed samplers add. Training pairs also carry the split indices
  of every image relevant to their caption (:class:`RelevantImages`: exact relevance where
  the dataset knows it, else the pair's own image), so a model can tell true matches from
  negatives among any images of the split it holds (batch or queue).

Images are always read through :func:`load_image` (any mode -> RGB), the same path the
real datasets use.
"""

from __future__ import annotations

import hashlib
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.safe_json import JsonReadError, loads_json
from datamodules.safe_json import read_json as read_safely

Transform = Callable[[Image.Image], torch.Tensor]

DIRECTIONS = ("t2i", "i2t", "i2i")


class DataError(ValueError):
    """Bad or missing dataset input. The message names the file, record and field."""


@dataclass(frozen=True)
class CaptionRecord:
    """One caption of an image, as stored in the annotations. ``instruction``: the query text
    the annotations give for this caption (the ``folder`` dataset's ``instruction`` column),
    used as is instead of an instruction template; None: a template renders the caption."""

    text: str
    complexity: int = 0
    constraints: dict[str, Any] | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: where it is, its captions, and optional structure.

    ``relevant_captions`` is only used by datasets whose relevance is richer than
    "a caption is relevant to its own image" (the synthetic benchmark): for each caption
    of this image, the ids of every image of the split that satisfies it.
    """

    image_id: str
    path: Path
    captions: tuple[CaptionRecord, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    relevant_images: tuple[tuple[str, ...], ...] | None = None
    i2i_relevant: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Relevance:
    """A sparse boolean relevance matrix (queries x gallery) in CSR form."""

    indptr: np.ndarray  # int64, shape (n_queries + 1,)
    indices: np.ndarray  # int64, gallery indices, sorted within each row
    n_gallery: int

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr[0] != 0:
            raise ValueError("Relevance.indptr must be 1-d and start at 0")
        if len(self.indices) != int(self.indptr[-1]):
            raise ValueError("Relevance.indices length must equal indptr[-1]")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.n_gallery):
            raise ValueError(f"Relevance.indices must lie in [0, {self.n_gallery})")

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]], n_gallery: int) -> Relevance:
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        flat = [np.sort(np.asarray(r, dtype=np.int64)) for r in rows]
        indices = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices.astype(np.int64), n_gallery)

    def transpose(self) -> Relevance:
        """Gallery x queries, vectorised (a Python loop per entry costs seconds at millions of
        captions); each row's query ids ascending, entries kept as they are."""
        queries = np.repeat(np.arange(self.n_queries, dtype=np.int64), self.counts())
        order = np.lexsort((queries, self.indices))  # by gallery item, then by query
        indptr = np.zeros(self.n_gallery + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.indices, minlength=self.n_gallery), out=indptr[1:])
        return Relevance(indptr, queries[order], self.n_queries)

    def dense(self) -> np.ndarray:
        out = np.zeros((self.n_queries, self.n_gallery), dtype=bool)
        rows = np.repeat(np.arange(self.n_queries), self.counts())
        out[rows, self.indices] = True
        return out


@dataclass(frozen=True)
class EvalSet:
    """Everything needed to evaluate retrieval on one split.

    Queries are the captions of the split's images, turned into instructions.
    ``relevance[direction]`` has one row per query of that direction: captions for
    ``t2i``, gallery images for ``i2t`` (its gallery being the captions) and ``i2i``
    (its gallery being the images, self excluded by the evaluation).
    """

    split: str
    image_ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    instructions: tuple[str, ...]
    captions: tuple[str, ...]
    complexity: np.ndarray  # int, per query
    source: np.ndarray  # int, per query: index of the image the caption was written for
    relevance: dict[str, Relevance]
    annotations_sha256: str
    #: separate ``i2i`` query images (datamodules/i2i.py ImageView, one per row of
    #: ``relevance["i2i"]``); None: the gallery images are the ``i2i`` queries
    i2i_views: tuple | None = None

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_queries(self) -> int:
        return len(self.instructions)

    def provenance(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "n_gallery_images": self.n_images,
            "n_queries": self.n_queries,
            "annotations_sha256": self.annotations_sha256,
            "complexity_levels": sorted(int(c) for c in np.unique(self.complexity)),
        }


class _Fields(dict):
    """Template fields for ``str.format_map``: an absent or empty field renders as ``""``."""

    def __missing__(self, key: str) -> str:
        return ""


def template_field_names(template: str) -> set[str]:
    """The ``{field}`` names a template uses (ValueError for a malformed template)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def record_fields(record: ImageRecord) -> dict[str, str]:
    """The fields a record offers to instruction templates: its string-valued metadata."""
    return {k: v for k, v in record.metadata.items() if isinstance(v, str)}


def format_instruction(template: str, caption: str, fields: dict[str, str] | None = None) -> str:
    """Fill a template: ``{caption}`` and, for datasets that offer them, per-record fields
    (MedPix: ``{type}``, ``{modality}``, ...). Without fields this is ``template.format(caption=...)``."""
    if not fields:
        return template.format(caption=caption)
    return template.format_map(_Fields(fields, caption=caption))


@dataclass(frozen=True)
class InstructionTemplates:
    """Templates that turn a caption into an instruction ("Find images of {caption}.").

    Evaluation uses a deterministic template per query (chosen by a hash of the caption
    index and the seed); training samples one at random. A caption whose annotations give its
    own instruction (``CaptionRecord.instruction``) is queried with that text instead. Besides
    ``{caption}`` a template may use the per-record fields its dataset offers
    (``RetrievalDataModule.template_fields``).
    """

    templates: tuple[str, ...] = ("{caption}",)

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("InstructionTemplates.templates must not be empty")
        for t in self.templates:
            if "{caption}" not in t:
                raise ValueError(f"instruction template {t!r} must contain '{{caption}}'")
            try:
                names = template_field_names(t)
            except ValueError as e:
                raise ValueError(f"instruction template {t!r} is malformed ({e})") from None
            if any(not n.isidentifier() for n in names):
                raise ValueError(f"instruction template {t!r}: fields must be plain names like {{caption}}")

    def fields(self) -> set[str]:
        """Every field name the templates use, ``caption`` excluded."""
        return set().union(*(template_field_names(t) for t in self.templates)) - {"caption"}

    def render(self, caption: str, index: int, seed: int = 0, fields: dict[str, str] | None = None) -> str:
        t = self.templates[(index * 2654435761 + seed) % len(self.templates)]
        return format_instruction(t, caption, fields)


def load_image(path: Path, draft_size: int | None = None) -> Image.Image:
    """Read an image from disk as RGB (RGBA, palette and grayscale are converted).

    ``draft_size``: the caller will shrink the image so that its shorter side is this
    size; for a JPEG, PIL's ``draft`` then decodes directly at the largest 1/2, 1/4 or 1/8
    scale whose sides both stay >= ``draft_size`` (a DCT-domain downscale: several times
    faster, and the result after resizing differs from the full decode by a few grey
    levels). Other formats ignore it.
    """
    try:
        with Image.open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return im.convert("RGB") if im.mode != "RGB" else im.copy()
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except Exception as e:  # PIL raises many types on corrupt data (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def check_image(path: Path) -> str | None:
    """``None`` when the image at ``path`` decodes, else why not ("missing", "unreadable (...)").

    The whole file is decoded (a header check alone misses truncated files); JPEGs are
    decoded at 1/8 scale (``draft``), which still reads every byte but costs ~1 ms.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (1, 1))
            im.load()
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "unreadable"
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def draft_size_of(transform: Transform) -> int | None:
    """The size a transform allows JPEG draft decoding at (``transform.draft_size()``), if any."""
    fn = getattr(transform, "draft_size", None)
    return fn() if callable(fn) else None


def sha256_of_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def read_json(path: Path, data: bytes | None = None) -> Any:
    """Read a JSON annotation file (or parse ``data``, its bytes already read) with the suite's
    safe JSON reader (``datamodules/safe_json.py``: non-UTF-8, a folder, deep nesting, huge
    numbers refused); errors name the file."""
    try:
        return loads_json(data, str(path)) if data is not None else read_safely(path, what="annotation file")
    except JsonReadError as e:
        raise DataError(str(e)) from None


def build_eval_set(
    split: str,
    records: Sequence[ImageRecord],
    templates: InstructionTemplates,
    annotations_sha256: str,
    seed: int = 0,
) -> EvalSet:
    """Flatten a split's records into an :class:`EvalSet` with exact relevance.

    Without explicit relevance a caption is relevant to its own image only, and two images
    are relevant to each other in ``i2i`` only if the dataset says so (``i2i_relevant``).
    """
    id_to_index = {r.image_id: i for i, r in enumerate(records)}
    if len(id_to_index) != len(records):
        raise DataError(f"split {split!r}: duplicate image ids")
    instructions: list[str] = []
    captions: list[str] = []
    complexity: list[int] = []
    source: list[int] = []
    t2i_rows: list[list[int]] = []
    i2i_rows: list[list[int]] = []
    for img_index, rec in enumerate(records):
        for c_index, cap in enumerate(rec.captions):
            q = len(captions)
            captions.append(cap.text)
            instructions.append(
                cap.instruction
                if cap.instruction is not None
                else templates.render(cap.text, q, seed, record_fields(rec))
            )
            complexity.append(cap.complexity)
            source.append(img_index)
            if rec.relevant_images is not None:
                row = [id_to_index[i] for i in rec.relevant_images[c_index]]
                if img_index not in row:
                    raise DataError(
                        f"split {split!r}, image {rec.image_id!r}, caption {c_index}: "
                        "relevant_images must contain the caption's own image"
                    )
            else:
                row = [img_index]
            t2i_rows.append(row)
        if rec.i2i_relevant is not None:
            i2i_rows.append([id_to_index[i] for i in rec.i2i_relevant if id_to_index[i] != img_index])
        else:
            i2i_rows.append([])
    t2i = Relevance.from_lists(t2i_rows, len(records))
    return EvalSet(
        split=split,
        image_ids=tuple(r.image_id for r in records),
        image_paths=tuple(r.path for r in records),
        instructions=tuple(instructions),
        captions=tuple(captions),
        complexity=np.asarray(complexity, dtype=np.int64),
        source=np.asarray(source, dtype=np.int64),
        relevance={"t2i": t2i, "i2t": t2i.transpose(), "i2i": Relevance.from_lists(i2i_rows, len(records))},
        annotations_sha256=annotations_sha256,
    )


def _placeholder(transform: Transform) -> torch.Tensor:
    return transform(Image.new("RGB", (8, 8)))


class IndexedImages(Dataset):
    """Gallery images: yields ``(global_index, pixel_tensor)``.

    ``tolerant=True`` (real datasets, not ``--strict``): an image that fails to load here
    -- it passed the setup check, so it vanished or changed since -- becomes a black image
    with a warning instead of crashing the run mid-evaluation; ``failures`` lists it (in
    this process; DataLoader workers warn only).
    """

    def __init__(self, paths: Sequence[Path], transform: Transform, tolerant: bool = False) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.tolerant = tolerant
        self.draft_size = draft_size_of(transform)
        self.failures: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        try:
            return i, self.transform(load_image(self.paths[i], self.draft_size))
        except DataError as e:
            if not self.tolerant:
                raise
            warnings.warn(f"{e}; using a black image in its place", RuntimeWarning, stacklevel=2)
            self.failures.append(str(self.paths[i]))
            return i, _placeholder(self.transform)


class IndexedTexts(Dataset):
    """Query texts: yields ``(global_index, text)``; the model tokenizes."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.texts[i]


class RelevantImages(tuple):
    """Split indices of the images relevant to one training caption (sorted, the caption's
    own image included). :func:`collate_indexed` stacks a column of them into a LongTensor
    ``[B, K]`` padded with -1."""


def relevant_indices(records: Sequence[ImageRecord]) -> list[list[RelevantImages] | None]:
    """Per record, per caption, the split indices of its relevant images (:class:`RelevantImages`);
    ``None`` for a record without explicit relevance (its captions: the own image only).
    Links to images not in ``records`` are dropped (they are not in the split)."""
    index = {r.image_id: i for i, r in enumerate(records)}
    return [
        None
        if r.relevant_images is None
        else [RelevantImages(sorted({index[i] for i in ids if i in index} | {j})) for ids in r.relevant_images]
        for j, r in enumerate(records)
    ]


class TrainPairs(Dataset):
    """Training pairs ``(image_index, pixel_tensor, instruction_text, relevant)``, one item per image.

    Each access draws one of the image's captions and one instruction template from
    torch's global generator, which Lightning seeds (``seed_everything(workers=True)``), so
    a run is reproducible and one image never appears twice in a batch (no duplicated
    in-batch negatives). With ``cache=True`` the transformed image tensors are kept in
    memory after their first load (for small datasets with a deterministic transform).
    ``tolerant=True``: an image that fails to load (it passed the setup check and vanished
    since) is replaced, with a warning, by the next image of the split that loads.
    ``relevant`` (:class:`RelevantImages`): the split indices of every image relevant to the
    drawn caption -- the dataset's exact relevance (SynthScenes' scene graphs), else the
    item's own image only (real datasets: "same image id").
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform,
        templates: InstructionTemplates,
        cache: bool = False,
        tolerant: bool = False,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.templates = templates
        self.tolerant = tolerant
        self.draft_size = draft_size_of(transform)
        self.failures: list[str] = []
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self._relevant = relevant_indices(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.records[i].path, self.draft_size))

    def _image(self, i: int) -> torch.Tensor:
        if self._cache is None:
            return self._load(i)
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str, RelevantImages]:
        for attempt in range(len(self.records) if self.tolerant else 1):
            j = (i + attempt) % len(self.records)
            try:
                pixels = self._image(j)
                break
            except DataError as e:
                if not self.tolerant:
                    raise
                warnings.warn(f"{e}; training on another image instead", RuntimeWarning, stacklevel=2)
                self.failures.append(str(self.records[j].path))
        else:
            raise DataError("no image of the training split could be loaded")
        rec = self.records[j]
        c = int(torch.randint(len(rec.captions), ()))
        template = self.templates.templates[int(torch.randint(len(self.templates.templates), ()))]
        per_caption = self._relevant[j]
        relevant = RelevantImages((j,)) if per_caption is None else per_caption[c]
        cap = rec.captions[c]  # the template is drawn even when unused: the same random stream either way
        text = (
            cap.instruction
            if cap.instruction is not None
            else format_instruction(template, cap.text, record_fields(rec))
        )
        return j, pixels, text, relevant


def collate_indexed(batch: list[tuple]) -> tuple:
    """Collate ``(index, item, ...)`` tuples: indices and tensors stacked, strings listed,
    :class:`RelevantImages` padded with -1 into a LongTensor ``[B, K]``."""
    out: list[torch.Tensor | list[Any]] = []
    for column in zip(*batch, strict=True):
        first = column[0]
        if isinstance(first, RelevantImages):
            padded = torch.full((len(column), max(map(len, column))), -1, dtype=torch.long)
            for row, ids in zip(padded, column):
                row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
            out.append(padded)
        elif isinstance(first, torch.Tensor):
            out.append(torch.stack(column))
        elif isinstance(first, int):
            out.append(torch.tensor(column, dtype=torch.long))
        else:
            out.append(list(column))
    return tuple(out)
