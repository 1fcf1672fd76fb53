"""Per-item tables of the retrieval metric kept in a file on disk instead of in host memory.

A token-reduction model (DynamicViT, CrossGET) re-ranks with its *reduced* vision tokens,
which depend on trained parameters and so cannot come from the frozen-feature cache: they
reach the metric with every encoded batch. At ViT-g a gallery image carries up to
257 x 1,409 half floats (0.7 MB): 3.6 GB for COCO's 5k test images, 72 GB for a 100k gallery,
held by every process; a 1M-image gallery's embeddings alone are 16 GB per process. Above
``eval.memmap_min_mb`` such a field is written instead into one file-backed table
``[n_items, *row]`` at the items' global indices (:class:`SpilledTable`):

* under DDP every process writes its own items into the same file (a shared cache folder,
  checked), with ``pwrite`` (a full disk is an ``OSError``, never a crash on a mapped page);
  nothing is gathered through collectives. On one machine the processes share the page cache.
  When they span machines, rows start on page boundaries (no page holds two processes' rows),
  every process flushes its rows and leaves a done-file, and none reads before all done-files
  are there;
* before scoring every process maps the whole table read-only, waits until all have mapped
  it, and unlinks it: scoring reads the rows it re-ranks from the mapping (as it reads the
  cached tokens of BLIP-2 and ours), and a crash while scoring leaves nothing on disk;
* a file left by a run that died while encoding (unlocked: every live writer holds a shared
  ``flock``, and older than an hour) is removed by the next evaluation's first process.

The results are bit-identical to the in-memory path (tested with 1 and 2 processes) as long as
the repeats of an item carry the same values (the evaluation's loaders repeat whole batches).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lightning_modules.components.feature_cache import pwrite_all, require_space
from lightning_modules.components.mapping import map_tensor

#: a spill file this old that no process holds is left over from a crash
STALE_AFTER_S = 3600.0
#: how long a process waits for the other machines' done-files to show in the shared folder
DONE_WAIT_S = 120.0


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


def agreed_layout(several_machines: bool = False) -> tuple[str, bool]:
    """``(name, spans_machines)``: a fresh name, the same on every process (broadcast from rank 0
    under DDP), and whether the processes run on more than one machine (``several_machines``,
    e.g. the trainer's ``num_nodes > 1``, or different host names)."""
    name = [uuid.uuid4().hex]
    if not _distributed():
        return name[0], False
    dist.broadcast_object_list(name, src=0)
    hosts: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    return name[0], several_machines or len(set(hosts)) > 1


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size ((0, 1) outside a distributed run)."""
    return (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)


def barrier() -> None:
    if _distributed():
        dist.barrier()


def sweep_stale(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove spill files of dead evaluations: older than ``older_than_s`` and locked by nobody
    (a live writer holds a shared ``flock`` until the table is unlinked). The removed paths."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in sorted(folder.glob("*.bin")):
        try:
            if now - path.stat().st_mtime < older_than_s:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held by a live evaluation
            continue
        try:
            for stale in [path, *folder.glob(f"{path.name}.done-*")]:
                stale.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


class SpilledTable:
    """A ``[n_rows, *row_shape]`` table of ``dtype`` in the file ``path``.

    ``several_machines``: rows start on page boundaries and :meth:`publish` flushes and checks
    that every process's rows reached the (shared) folder. Created sparse after checking the
    disk can take it all. :meth:`write` puts rows at global indices; :meth:`publish` (on every
    process, a collective under DDP) maps the finished table and unlinks the file;
    :meth:`table` is then the whole table.
    """

    def __init__(
        self, path: Path, n_rows: int, row_shape: tuple[int, ...], dtype: torch.dtype, *, several_machines: bool = False
    ) -> None:
        self.path, self.n_rows, self.row_shape, self.dtype = Path(path), int(n_rows), tuple(row_shape), dtype
        self.several_machines = several_machines
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.row_bytes = math.prod(self.row_shape) * self.itemsize
        self.stride_bytes = self.row_stride_bytes(self.row_bytes, aligned=several_machines)
        self.nbytes = self.n_rows * self.stride_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        have = self.path.stat().st_blocks * 512 if self.path.exists() else 0  # another process created it
        require_space(
            self.path.parent,
            self.nbytes - have,
            f"evaluation spill {self.path.parent}/: {self.n_rows} items x {list(self.row_shape)} in "
            f"{str(dtype).removeprefix('torch.')}",
            remedy="raise eval.memmap_min_mb to keep the table in memory",
        )
        # O_WRONLY: a partial-page write never reads the page back first (no other process's bytes cached)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # alive: sweep_stale leaves it alone
        if os.fstat(self._fd).st_size < self.nbytes:
            os.ftruncate(self._fd, self.nbytes)  # sparse; every process extends it to the same size
        self._rows: torch.Tensor | None = None

    @staticmethod
    def row_stride_bytes(row_bytes: int, *, aligned: bool) -> int:
        """Bytes from one row's start to the next: the row itself, or whole pages."""
        return math.ceil(row_bytes / mmap.PAGESIZE) * mmap.PAGESIZE if aligned else row_bytes

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows ``rows[i]`` at global index ``index[i]`` (repeats of one item write the same row)."""
        if self._fd is None:
            raise RuntimeError(f"SpilledTable {self.path.name}: write after publish (reset the metric first)")
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"spilled rows of shape {tuple(rows.shape[1:])}, the table holds {self.row_shape}")
        index = index.to(device="cpu", dtype=torch.long)
        if len(index) != len(rows):
            raise ValueError(f"{len(index)} indices for {len(rows)} spilled rows")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.n_rows):
            raise ValueError(f"spilled row indices must lie in [0, {self.n_rows}), got "
                             f"[{int(index.min())}, {int(index.max())}]")  # fmt: skip
        data = rows.detach().to(device="cpu", dtype=self.dtype).contiguous().reshape(len(rows), -1)
        raw = data.view(torch.uint8).numpy()  # [rows, row_bytes], any dtype (bf16 too)
        idx = index.numpy()
        # runs of consecutive indices are one write when rows are packed
        breaks = (
            np.flatnonzero(np.diff(idx) != 1) + 1 if self.stride_bytes == self.row_bytes else np.arange(1, len(idx))
        )
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(idx)], strict=True):
            if hi > lo:
                pwrite_all(self._fd, raw[lo:hi], int(idx[lo]) * self.stride_bytes)

    def publish(self) -> None:
        """Every process: make the finished table readable, then unlink its file. Across machines
        each process first flushes its rows and leaves a done-file; all wait for one another, check
        every done-file is visible (the folder must be shared), map the table read-only, wait again
        (every process holds its mapping) and unlink the file (a crash while scoring leaves nothing)."""
        if self._rows is not None:
            return
        if self._fd is None:
            raise RuntimeError(f"SpilledTable {self.path.name}: published after being removed")
        if self.several_machines:
            os.fsync(self._fd)
            with contextlib.suppress(OSError):  # drop this machine's cached pages: the mapping reads the file
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            Path(f"{self.path}.done-{rank_and_world()[0]}").touch()
        barrier()
        if self.several_machines:
            self._check_done(rank_and_world()[1])
        flat = map_tensor(self.path, self.dtype)  # copy-on-write, no memory reserved (a table larger than RAM maps)
        inner = torch.empty(self.row_shape, dtype=self.dtype, device="meta").stride()
        self._rows = torch.as_strided(
            flat, (self.n_rows, *self.row_shape), (self.stride_bytes // self.itemsize, *inner)
        )
        barrier()
        self.remove()

    def _check_done(self, world: int) -> None:
        expected = {f"{self.path.name}.done-{r}" for r in range(world)}
        deadline = time.monotonic() + DONE_WAIT_S
        while True:
            missing = expected - set(os.listdir(self.path.parent))  # a fresh listing: no cached absence
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if missing:
            raise RuntimeError(
                f"evaluation spill {self.path.parent}/: the rows of {len(missing)} of {world} processes never "
                f"appeared there ({sorted(missing)[:4]}): with processes on several machines the cache folder "
                "must be one folder shared by all of them (INSTRUCTSEE_CACHE or --cache-dir), or raise "
                "eval.memmap_min_mb to gather the table instead"
            )

    def table(self) -> torch.Tensor:
        """The whole table, row i = item i (a view of the mapping; indexing it copies rows)."""
        if self._rows is None:
            raise RuntimeError("SpilledTable.table() before publish(): the other processes' rows may be missing")
        return self._rows

    def remove(self) -> None:
        """Unlink the file (and done-files) and release the lock; a published table stays mapped."""
        for path in [self.path, *self.path.parent.glob(f"{self.path.name}.done-*")]:
            path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
