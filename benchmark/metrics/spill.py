"""Per-item tables of the retrieval metric kept in a file on disk instead of in host memory.

A token-reduction model (DynamicViT, CrossGET) re-ranks with its *reduced* vision tokens,
which depend on trained parameters and so cannot come from the frozen-feature cache: they
reach the metric with every encoded batch. At ViT-g a gallery image carries up to
257 x 1,409 half floats (0.7 MB): 3.6 GB for COCO's 5k test images, 72 GB for a 100k gallery,
held by every process. Above ``eval.memmap_min_mb`` such a field is written instead into one
file-backed table ``[n_items, *row]`` at the items' global indices (:class:`SpilledTable`):

* under DDP every process writes its own items into the same file (a shared cache folder, as
  the feature cache requires across nodes); rows start on page boundaries, so no memory page
  is written by two processes; nothing is gathered through collectives;
* before scoring each process flushes its rows to the file, waits for the others and maps the
  whole table read-only; scoring then reads the rows it re-ranks, as it reads the cached
  tokens of BLIP-2 and ours;
* the file is unlinked once every process has scored (in one process: as soon as it is
  created, so even a crash leaves nothing behind); the results are bit-identical to the
  in-memory path (tested with 1 and 2 processes).
"""

from __future__ import annotations

import math
import mmap
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lightning_modules.components.feature_cache import SPACE_MARGIN_BYTES, CacheSpaceError


@dataclass(frozen=True)
class SpillConfig:
    """folder: where the tables' files go (a folder every process can reach: the run's cache);
    min_bytes: a field whose whole table would hold at least this many bytes is spilled."""

    folder: Path
    min_bytes: int

    def __post_init__(self) -> None:
        if self.min_bytes < 0:
            raise ValueError(f"SpillConfig.min_bytes must be >= 0, got {self.min_bytes}")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed_name() -> str:
    """A fresh name, the same on every process (broadcast from rank 0 under DDP)."""
    name = [uuid.uuid4().hex]
    if _distributed():
        dist.broadcast_object_list(name, src=0)
    return name[0]


def barrier() -> None:
    if _distributed():
        dist.barrier()


class SpilledTable:
    """A ``[n_rows, *row_shape]`` table of ``dtype`` in the file ``path``, rows page-aligned.

    Created sparse (rows cost disk only once written) after checking the disk can take it all.
    :meth:`write` puts rows at global indices; :meth:`table` is the whole table for scoring
    (after :meth:`publish` under DDP); :meth:`remove` unlinks the file.
    """

    def __init__(self, path: Path, n_rows: int, row_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.path, self.n_rows, self.row_shape, self.dtype = Path(path), int(n_rows), tuple(row_shape), dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.row_numel = math.prod(self.row_shape)
        self.stride = math.ceil(self.row_numel * itemsize / mmap.PAGESIZE) * mmap.PAGESIZE // itemsize
        self.nbytes = self.n_rows * self.stride * itemsize
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.path.parent).free
        have = self.path.stat().st_blocks * 512 if self.path.exists() else 0  # another process created it
        if self.nbytes - have + SPACE_MARGIN_BYTES > free:
            raise CacheSpaceError(
                f"evaluation spill {self.path.parent}/: {self.n_rows} items x {list(self.row_shape)} in "
                f"{str(dtype).removeprefix('torch.')} need {self.nbytes / 2**30:.2f} GiB of disk, "
                f"{free / 2**30:.2f} GiB are free: free space there, point INSTRUCTSEE_CACHE (or --cache-dir) "
                "at a larger disk, or raise eval.memmap_min_mb to keep the table in memory"
            )
        self._rows = self._view(
            torch.from_file(str(self.path), shared=True, size=self.n_rows * self.stride, dtype=dtype)
        )
        self.published = False
        if not _distributed():  # nobody else opens it: the mapping outlives the name, a crash leaves no file
            self.remove()

    def _view(self, flat: torch.Tensor) -> torch.Tensor:
        inner = torch.empty(self.row_shape, dtype=self.dtype, device="meta").stride()
        return torch.as_strided(flat, (self.n_rows, *self.row_shape), (self.stride, *inner))

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows ``rows[i]`` at global index ``index[i]`` (repeats of one item write the same row)."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"spilled rows of shape {tuple(rows.shape[1:])}, the table holds {self.row_shape}")
        index = index.to(device="cpu", dtype=torch.long)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.n_rows):
            raise ValueError(f"spilled row indices must lie in [0, {self.n_rows}), got "
                             f"[{int(index.min())}, {int(index.max())}]")  # fmt: skip
        self._rows[index] = rows.detach().to(device="cpu", dtype=self.dtype)

    def publish(self) -> None:
        """Under DDP: flush this process's rows to the file, wait for every process, then map the
        table anew read-only (a fresh open sees the other nodes' rows on a network file system)."""
        if self.published or not _distributed():
            self.published = True
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the dirty pages of this process's shared mapping, written to the file
        finally:
            os.close(fd)
        barrier()
        self._rows = self._view(
            torch.from_file(str(self.path), shared=False, size=self.n_rows * self.stride, dtype=self.dtype)
        )
        self.published = True

    def table(self) -> torch.Tensor:
        """The whole table, row i = item i (a view of the mapping; indexing it copies rows)."""
        if not self.published:
            raise RuntimeError("SpilledTable.table() before publish(): the other processes' rows may be missing")
        return self._rows

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
