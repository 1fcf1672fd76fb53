"""On-disk cache of frozen vision features, per (vision tower, dataset split, storage dtype).

A frozen tower gives the same tokens for the same image every time, so the BLIP2 family
(and its ablations, and repeated runs) compute them once: the first use of a split runs
the tower over every image of the split and writes one ``.npy`` array,
``<root>/<key>.npy`` holding ``[n_images, N, D]`` tokens in the storage dtype (float32 at
tiny size, float16 at full size: ViT-g/14 gives 257 x 1408 tokens, 0.72 MB per image in
fp16), where ``key`` hashes the tower's fingerprint (weights, token selection, transform --
:func:`~lightning_modules.components.vision_tower.state_fingerprint`), the split's name,
its number of images, its annotation checksum and the dtype. Row ``i`` is image ``i`` of the
split, so the file doubles as the gallery's store of vision tokens for ITM re-ranking.

Writing streams: rows go into a preallocated temporary ``.npy`` (memory-mapped) batch by
batch, so peak RAM is one batch whatever the split's size, and the file is renamed into
place only when complete: concurrent or interrupted runs never see a half-written file. An
interrupted extraction resumes: the batches logged as flushed are not computed again
(:class:`RowWriter`).
Who computes the rows is an :class:`Extractor`: in-process by default
(:class:`LocalExtractor`); the runner installs one that runs the tower inside a Lightning
``predict`` loop on the run's accelerator, devices and precision, with DataLoader workers,
every rank writing its own rows (``benchmark/extraction.py``).

Reading: a file up to ``memmap_min_bytes`` is loaded into memory; a bigger one is
memory-mapped (copy-on-write without reserving memory, ``mapping.py``, so the returned tensor
is an ordinary writable tensor whose pages come from the page cache): a gallery far larger than
RAM is read row by row as re-ranking asks for it.

:class:`FeatureCache` is the DataModule's *item loader* (``RetrievalDataModule.
set_item_loader``): ``for_split(split, n, checksum, images)`` returns ``i -> tokens [N, D]``
in place of ``i -> pixels [3, H, W]``; the model recognises tokens by their rank (3 dims
per batch instead of 4). It records how long each extraction took (``timings``) and
which files it used (``provenance``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Protocol, TextIO, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import DataError, collate_indexed
from datamodules.sharding import RankBatches
from lightning_modules.components.mapping import map_npy
from lightning_modules.components.vision_tower import VisionTower

FORMAT_VERSION = 2
#: storage dtypes by name (``eval.storage_dtype``); numpy has no bfloat16, so it is not offered here
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
#: files above this size are memory-mapped instead of read into memory
DEFAULT_MEMMAP_MIN_BYTES = 1 << 30
#: free disk kept beyond a feature file's own bytes (its header, the batch logs, the file system's slack)
SPACE_MARGIN_BYTES = 64 << 20


class CacheSpaceError(DataError):
    """The cache folder's disk cannot hold a feature file; raised before any row is written."""


def require_space(folder: Path, need: int, what: str, remedy: str = "") -> None:
    """Refuse (:class:`CacheSpaceError`) when the disk of ``folder`` has less than ``need`` bytes
    (plus a margin) free. ``what`` opens the message (the folder and what goes there); ``remedy``
    is offered after the usual ones."""
    free = shutil.disk_usage(folder).free
    if need + SPACE_MARGIN_BYTES > free:
        raise CacheSpaceError(
            f"{what} need {need / 2**30:.2f} GiB more disk, {free / 2**30:.2f} GiB are free: free space "
            f"there, {'' if remedy else 'or '}point INSTRUCTSEE_CACHE (or --cache-dir) at a larger disk"
            + (f", or {remedy}" if remedy else "")
        )


def pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write the C-contiguous array ``data`` at ``offset`` of ``fd`` whole: ``pwrite`` may write
    less than asked (at most ~2 GiB per call on Linux), so it is called until every byte is out;
    no copy of ``data`` is made."""
    view = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
    while len(view):
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote nothing at offset {offset} ({len(view)} bytes left)")
        view, offset = view[n:], offset + n


def feature_key(
    tower_fingerprint: str, split: str, n_images: int, checksum: str, dtype: torch.dtype = torch.float32
) -> str:
    payload = {
        "v": FORMAT_VERSION,
        "tower": tower_fingerprint,
        "split": split,
        "n": n_images,
        "annotations": checksum,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class RowWriter:
    """Rows of a preallocated ``.npy`` array at a temporary path, renamed into place by :meth:`commit`.

    Resumable: the temporary array (``.<name>.partial.npy``) and, per rank, a log of the batches
    whose rows are flushed to it (``.<name>.partial.done-<rank>``) survive a crash, so a rerun
    computes only the batches no log lists (:meth:`completed_batches`). ``prepare`` (one process:
    rank 0) creates the array -- or keeps a partial one of the same shape and dtype -- and holds a
    lock file, so that two independent runs never write the same partial array;
    ``attach`` maps it in the other ranks."""

    def __init__(self, path: Path, n_rows: int, dtype: torch.dtype) -> None:
        self.path = Path(path)
        self.n_rows = n_rows
        self.dtype = dtype
        self.tmp = self.path.with_name(f".{self.path.name}.partial.npy")
        self.array: np.memmap | None = None
        self._lock: int | None = None
        self._log: TextIO | None = None

    def _done_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}.partial.done-*"))

    def completed_batches(self) -> set[int]:
        """Batches of an interrupted extraction whose rows are in the partial array (empty without one)."""
        if not self.tmp.exists():
            return set()
        done: set[int] = set()
        for f in self._done_files():
            done |= {int(line) for line in f.read_text().split() if line.isdigit()}
        return done

    def check_space(self, row_shape: tuple[int, ...]) -> None:
        """Refuse to start when the disk cannot take the whole array (COCO train at ViT-g is 82 GB
        in fp16): the file is preallocated sparse, so a full disk would otherwise surface midway
        (as a crash on a memory-mapped write). A partial array counts with what it already holds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        need = int(np.prod((self.n_rows, *row_shape))) * np.dtype(_NUMPY[self.dtype]).itemsize
        if self.tmp.exists():
            need -= self.tmp.stat().st_blocks * 512
        require_space(
            self.path.parent,
            need,
            f"feature cache {self.path.parent}/: {self.n_rows} images x {list(row_shape)} tokens in "
            f"{str(self.dtype).removeprefix('torch.')}",
        )

    def prepare(self, row_shape: tuple[int, ...]) -> bool:
        """Take the lock, then keep a matching partial array or create a new one; True if resumed."""
        self.check_space(row_shape)
        self._lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another run extracting this split: wait for it
        shape = (self.n_rows, *row_shape)
        if self.tmp.exists():
            try:
                partial = np.load(self.tmp, mmap_mode="r+")
                if partial.shape == shape and partial.dtype == _NUMPY[self.dtype]:
                    self.array = partial
                    return True
            except (ValueError, OSError):
                pass  # unreadable: start over
        for f in self._done_files():
            f.unlink()
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=_NUMPY[self.dtype], shape=shape)
        return False

    def attach(self) -> None:
        self.array = np.load(self.tmp, mmap_mode="r+")

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        if self.array is None:
            self.prepare(tuple(rows.shape[1:]))
        assert self.array is not None
        idx = index.detach().cpu().numpy()
        self.array[idx] = rows.detach().to(device="cpu", dtype=self.dtype).numpy()

    def mark_done(self, batch: int, rank: int = 0) -> None:
        """Flush the rows written so far and log ``batch`` as complete (after the rows: a crash in
        between only recomputes the batch)."""
        self.flush()
        if self._log is None:
            # kept open across batches (one append per batch) and closed by close(): no `with` can span that
            self._log = open(self.path.with_name(f".{self.path.name}.partial.done-{rank}"), "a", encoding="ascii")  # noqa: SIM115
        self._log.write(f"{batch}\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def flush(self) -> None:
        if self.array is not None:
            self.array.flush()

    def close(self) -> None:
        """Release this process's handles (the partial files stay for a later resume)."""
        self.flush()
        self.array = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def commit(self) -> None:
        """Rename the complete array into place and remove the logs (one process: rank 0)."""
        self.flush()
        self.array = None
        os.replace(self.tmp, self.path)
        for f in self._done_files():
            f.unlink()
        self.close()


class Extractor(Protocol):
    """Runs ``tower`` over every ``(index, pixels)`` item of ``images`` and writes the tokens with ``writer``."""

    def __call__(self, tower: VisionTower, images: Dataset, writer: RowWriter, batch_size: int) -> None: ...


class LocalExtractor:
    """In this process, on the tower's device, batch after batch in index order (the batches an
    interrupted extraction completed are skipped)."""

    def __call__(self, tower: VisionTower, images: Dataset, writer: RowWriter, batch_size: int) -> None:
        device = next(iter(tower.parameters())).device if hasattr(tower, "parameters") else torch.device("cpu")
        done = writer.completed_batches()
        try:
            with torch.no_grad():  # the first write prepares the array (or keeps the partial one)
                sampler = RankBatches(len(cast(Sized, images)), batch_size, skip=done)
                for b, (index, pixels) in zip(
                    sampler.batch_ids(), DataLoader(images, batch_sampler=sampler, collate_fn=collate_indexed)
                ):
                    writer.write(torch.as_tensor(index), tower(pixels.to(device)))
                    writer.mark_done(b)
            writer.commit()
        finally:
            writer.close()


class _Pixels(Dataset):
    """``(index, pixels)`` items from a plain ``index -> pixels`` function."""

    def __init__(self, n: int, pixels: Callable[[int], torch.Tensor]) -> None:
        self.n, self.pixels = n, pixels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.pixels(i)


class FeatureCache:
    """Frozen tower features of whole splits, computed once and stored under ``root``.

    Args:
        tower: the frozen vision tower.
        root: cache folder (e.g. ``<cache>/features``).
        batch_size: images per tower call while extracting.
        dtype: storage dtype (float32 default; float16 halves the disk and memory of big towers).
        memmap_min_bytes: files larger than this are memory-mapped rather than read into memory.
        extractor: computes missing files (default: :class:`LocalExtractor`).
    """

    def __init__(
        self,
        tower: VisionTower,
        root: Path,
        batch_size: int = 256,
        dtype: torch.dtype = torch.float32,
        memmap_min_bytes: int = DEFAULT_MEMMAP_MIN_BYTES,
        extractor: Extractor | None = None,
    ):
        self.tower = tower
        self.root = Path(root)
        self.extractor: Extractor = LocalExtractor()
        self.timings: dict[str, float] = {}
        self.provenance: dict[str, dict] = {}
        self._memory: dict[str, torch.Tensor] = {}
        self.configure(dtype=dtype, memmap_min_bytes=memmap_min_bytes, extractor=extractor, batch_size=batch_size)

    def configure(
        self,
        *,
        dtype: torch.dtype | None = None,
        memmap_min_bytes: int | None = None,
        extractor: Extractor | None = None,
        batch_size: int | None = None,
    ) -> FeatureCache:
        """Set the run's storage dtype, memory-map threshold, extractor and batch size (the runner's seam)."""
        if dtype is not None:
            if dtype not in _NUMPY:
                raise ValueError(f"feature cache dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype}")
            self.dtype = dtype
        if memmap_min_bytes is not None:
            self.memmap_min_bytes = memmap_min_bytes
        if extractor is not None:
            self.extractor = extractor
        if batch_size is not None:
            self.batch_size = batch_size
        return self

    def path(self, split: str, n_images: int, checksum: str) -> Path:
        return self.root / f"{feature_key(self.tower.fingerprint(), split, n_images, checksum, self.dtype)}.npy"

    def features(self, split: str, n_images: int, checksum: str, images: Dataset) -> torch.Tensor:
        """``[n_images, N, D]`` tokens of a split: from memory, from disk, or computed now and stored."""
        path = self.path(split, n_images, checksum)
        key = str(path)
        if key in self._memory:
            return self._memory[key]
        if not path.exists():
            t = time.perf_counter()
            writer = RowWriter(path, n_images, self.dtype)
            resumed = len(writer.completed_batches())
            self.extractor(self.tower, images, writer, self.batch_size)  # a crash keeps the partial file
            self.timings[f"features_{split}_extract_s"] = time.perf_counter() - t
            self.provenance[split] = {"file": path.name, "hit": False, "resumed_batches": resumed}
        else:
            self.provenance[split] = {"file": path.name, "hit": True}
        t = time.perf_counter()
        feats = self.read(path)
        self.timings[f"features_{split}_load_s"] = time.perf_counter() - t
        size = path.stat().st_size
        self.provenance[split] |= {
            "bytes": size,
            "memory_mapped": size > self.memmap_min_bytes,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if feats.shape[0] != n_images:
            raise ValueError(f"{path}: holds {feats.shape[0]} items, expected {n_images}")
        self._memory[key] = feats
        return feats

    def read(self, path: Path) -> torch.Tensor:
        """The array at ``path``: in memory up to ``memmap_min_bytes``, else memory-mapped."""
        if path.stat().st_size > self.memmap_min_bytes:
            return torch.from_numpy(map_npy(path))
        return torch.from_numpy(np.load(path))

    # -- the DataModule's item-loader interface ------------------------------------------
    def for_split(
        self, split: str, n_images: int, checksum: str, images: Dataset | Callable[[int], torch.Tensor]
    ) -> Callable[[int], torch.Tensor]:
        """``index -> tokens``; ``images``: the split's ``(index, pixels)`` dataset (or an ``index -> pixels`` function)."""
        if not isinstance(images, Dataset):
            images = _Pixels(n_images, images)
        feats = self.features(split, n_images, checksum, images)
        return feats.__getitem__
