"""An encoded gallery in one safetensors file: written batch by batch, then mapped copy-on-write.

``bench feedback`` and ``bench serve`` score queries against the whole evaluated gallery, round
after round, so they keep its encodings. At ViT-g a gallery image of BLIP-2 and ours is 32 x 256
floats (32 KB), and a token-reduction model's re-ranking tokens add up to 0.7 MB: 3.6 GB for
COCO's 5k test images, 72 GB for a 100k gallery. Held in memory (and concatenated, which holds
them twice), such a gallery does not fit. Here it goes to disk instead:

* :func:`write_gallery` writes each encoded batch's rows at their offsets (``pwrite``; the
  disk is checked first) into a temporary file beside the target, then fsyncs and renames it:
  a crash never leaves a truncated file. Nothing is gathered in memory. :func:`scratch_gallery`
  writes the same file for one process's use: mapped, then unlinked.
* :func:`map_gallery` maps the file copy-on-write without reserving memory
  (``lightning_modules/components/mapping.py``: a file larger than RAM maps): the rows are read
  from the page cache as scoring reaches them. An absent, truncated or foreign file is ``None``.
* :func:`place` moves a gallery smaller than a budget to the scoring device and leaves a larger
  one mapped on the host, as the evaluation keeps its gallery (the models move gallery blocks
  to their device as they score).

The file is plain safetensors (``safetensors.torch.load_file`` reads it): tensors ``emb``,
``lengths`` (if any) and ``extra.<name>``, ordered by element size so that every tensor starts
aligned; the metadata says ``format``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmark.atomic import clean_stale_temps, plain_file_mode, temp_sibling
from lightning_modules.base import Encoded
from lightning_modules.components.feature_cache import pwrite_all, require_space
from lightning_modules.components.mapping import map_tensor

FORMAT = "instructsee-gallery/1"
#: formats :func:`map_gallery` reads (the second: ``bench serve``'s cache files before this module)
FORMATS = (FORMAT, "instructsee-serve-gallery/1")
EXTRA_PREFIX = "extra."
#: safetensors' own limit on the header
MAX_HEADER_BYTES = 100_000_000
DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_BY_NAME = {v: k for k, v in DTYPES.items()}


class GalleryFileError(ValueError):
    """Batches that do not make one gallery (out of order, changing shapes, too few or many)."""


def fields(encoded: Encoded) -> dict[str, torch.Tensor]:
    """``{tensor name: [N, ...] tensor}`` of an encoding, as the file names them."""
    out = {"emb": encoded.emb}
    if encoded.lengths is not None:
        out["lengths"] = encoded.lengths
    out |= {EXTRA_PREFIX + k: v for k, v in (encoded.extra or {}).items()}
    return out


def from_fields(tensors: dict[str, torch.Tensor]) -> Encoded:
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return Encoded(tensors["emb"], tensors.get("lengths"), extra or None)


def row_bytes(encoded: Encoded) -> int:
    """Bytes of one item over every field."""
    return sum(math.prod(t.shape[1:]) * t.element_size() for t in fields(encoded).values())


@dataclass(frozen=True)
class _Layout:
    """Where each field's ``[n, *row]`` block lies in the file."""

    n: int
    dtypes: dict[str, torch.dtype]
    rows: dict[str, tuple[int, ...]]
    starts: dict[str, int]  # absolute byte offset of row 0
    header: bytes
    total: int

    @classmethod
    def of(cls, first: Encoded, n: int) -> _Layout:
        ts = fields(first)
        for name, t in ts.items():
            if t.dtype not in DTYPES:
                raise GalleryFileError(f"gallery field {name!r}: dtype {t.dtype} cannot be stored")
        # largest elements first: every tensor then starts at a multiple of its element size
        order = sorted(ts, key=lambda k: (-ts[k].element_size(), k))
        entries, offset, spans = {}, 0, {}
        for name in order:
            t = ts[name]
            nbytes = n * math.prod(t.shape[1:]) * t.element_size()
            entries[name] = {
                "dtype": DTYPES[t.dtype],
                "shape": [n, *t.shape[1:]],
                "data_offsets": [offset, offset + nbytes],
            }
            spans[name] = offset
            offset += nbytes
        header = json.dumps({"__metadata__": {"format": FORMAT}, **entries}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        base = 8 + len(header)
        return cls(
            n,
            {k: t.dtype for k, t in ts.items()},
            {k: tuple(t.shape[1:]) for k, t in ts.items()},
            {k: base + spans[k] for k in ts},
            header,
            base + offset,
        )

    def check(self, enc: Encoded, where: str) -> dict[str, torch.Tensor]:
        ts = fields(enc)
        if set(ts) != set(self.dtypes):
            raise GalleryFileError(f"{where}: fields {sorted(ts)}, the first batch had {sorted(self.dtypes)}")
        for name, t in ts.items():
            if t.dtype != self.dtypes[name] or tuple(t.shape[1:]) != self.rows[name]:
                raise GalleryFileError(
                    f"{where}: field {name!r} is {t.dtype} {tuple(t.shape[1:])} per item, the first batch's "
                    f"{self.dtypes[name]} {self.rows[name]}"
                )
        return ts


def write_gallery(path: Path, batches: Iterable[tuple[torch.Tensor, Encoded]], n_items: int) -> Encoded:
    """Write the ``n_items`` items of ``batches`` (``(gallery indices, encodings)``, in index
    order) to ``path`` atomically, and map it; the disk of ``path`` must hold it all (checked
    before writing)."""
    path = Path(path)
    tmp = _fresh_temp(path)
    try:
        _write(tmp, batches, n_items)
        os.chmod(tmp, plain_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_back(path)


def scratch_gallery(
    path: Path, batches: Iterable[tuple[torch.Tensor, Encoded]], n_items: int, *, remedy: str = ""
) -> Encoded:
    """The items of ``batches`` written as :func:`write_gallery` does, but under a temporary name
    beside ``path`` that is unlinked once mapped: this process's alone, and nothing stays on
    disk (a crash's leftover is removed by the next call for the same ``path`` on this host).
    ``remedy``: offered when the disk is too small."""
    tmp = _fresh_temp(Path(path))
    try:
        _write(tmp, batches, n_items, remedy)
        return _read_back(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _read_back(path: Path) -> Encoded:
    mapped = map_gallery(path)
    if mapped is None:
        raise RuntimeError(f"{path}: the gallery file just written cannot be read back")
    return mapped


def _fresh_temp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    return temp_sibling(path)


def _write(tmp: Path, batches: Iterable[tuple[torch.Tensor, Encoded]], n_items: int, remedy: str = "") -> None:
    fd: int | None = None
    try:
        layout: _Layout | None = None
        done = 0
        for index, enc in batches:
            index = torch.as_tensor(index).reshape(-1).cpu()
            where = f"gallery batch of items {int(index[0]) if len(index) else done}.."
            if not torch.equal(index, torch.arange(done, done + len(index))):
                raise GalleryFileError(f"{where}: items must come in index order from {done}, without repeats")
            if len(index) != len(enc):
                raise GalleryFileError(f"{where}: {len(index)} indices for {len(enc)} encodings")
            if done + len(index) > n_items:
                raise GalleryFileError(f"{where}: more than the {n_items} gallery items")
            if layout is None:
                layout = _Layout.of(enc, n_items)
                require_space(tmp.parent, layout.total, f"gallery encodings {tmp.parent}/ ({n_items} items)", remedy)
                fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                os.ftruncate(fd, layout.total)
                pwrite_all(fd, np.frombuffer(struct.pack("<Q", len(layout.header)) + layout.header, np.uint8), 0)
            assert fd is not None
            for name, t in layout.check(enc, where).items():
                data = (
                    t.detach().to("cpu").contiguous().reshape(len(t), math.prod(t.shape[1:])).view(torch.uint8).numpy()
                )
                pwrite_all(fd, data, layout.starts[name] + done * data.shape[1])
            done += len(index)
        if layout is None or done != n_items:
            raise GalleryFileError(f"gallery: {done} items encoded, {n_items} expected")
        assert fd is not None
        os.fsync(fd)
    finally:
        if fd is not None:
            os.close(fd)
        close = getattr(batches, "close", None)
        if close is not None:  # a generator left suspended by an error: its loader's workers go now
            close()


def map_gallery(path: Path) -> Encoded | None:
    """The encodings of a gallery file, mapped copy-on-write without reserving memory
    (:func:`~lightning_modules.components.mapping.map_tensor`: a file larger than RAM maps); None
    when absent, truncated or not a gallery file of the suite (see :func:`_entries`). A mapping
    the system refuses raises ``OSError``."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n_header,) = struct.unpack("<Q", f.read(8))
            if not 0 < n_header <= min(MAX_HEADER_BYTES, size - 8):
                return None
            header = json.loads(f.read(n_header))
    except (OSError, struct.error, ValueError, RecursionError):
        return None
    base = 8 + n_header
    entries = _entries(header, base, size)
    if entries is None:
        return None
    flat = map_tensor(path)
    return from_fields(
        {name: flat[base + lo : base + hi].view(dtype).view(shape) for name, (dtype, shape, lo, hi) in entries.items()}
    )


def _entries(header: object, base: int, size: int) -> dict[str, tuple[torch.dtype, list[int], int, int]] | None:
    """``{name: (dtype, shape, start, end)}`` of a header that describes a gallery file: our
    ``format`` (or the former serve cache's), known dtypes, integer shapes and offsets that
    tile the data without overlap, a floating ``emb`` and integer ``lengths`` of one item count."""
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        return None
    out: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _BY_NAME:
            return None
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not isinstance(offsets, list) or not shape or len(offsets) != 2:
            return None
        if any(type(x) is not int or x < 0 for x in [*shape, *offsets]):
            return None
        dtype = _BY_NAME[entry["dtype"]]
        lo, hi = offsets
        itemsize = torch.empty((), dtype=dtype).element_size()
        if hi - lo != math.prod(shape) * itemsize or base + hi > size or (base + lo) % itemsize:
            return None
        out[name] = (dtype, shape, lo, hi)
    spans = sorted((lo, hi) for _, _, lo, hi in out.values())
    if any(b[0] < a[1] for a, b in itertools.pairwise(spans)):
        return None
    emb, lengths = out.get("emb"), out.get("lengths")
    if emb is None or not emb[0].is_floating_point or len(emb[1]) < 2:
        return None
    if lengths is not None and (lengths[0].is_floating_point or lengths[0] == torch.bool or lengths[1] != emb[1][:1]):
        return None
    if any(shape[0] != emb[1][0] for _, shape, _, _ in out.values()):
        return None
    return out


def nbytes(encoded: Encoded) -> int:
    return row_bytes(encoded) * len(encoded)


def place(encoded: Encoded, device: str | torch.device, max_device_bytes: int) -> Encoded:
    """The whole encoding on ``device`` when smaller than ``max_device_bytes``; else where it is
    (mapped on the host, as the evaluation keeps its gallery: the models move gallery blocks to
    their device as they score)."""
    return encoded.to(device) if nbytes(encoded) < max_device_bytes else encoded
