"""Copy-on-write file mappings that reserve no memory, so that a file larger than RAM + swap maps.

A private writable mapping (numpy's ``mmap_mode="c"``, ``torch.from_file(shared=False)``) is
charged in full against the kernel's commit limit. Under the default heuristic overcommit
(``vm.overcommit_memory = 0``), a file larger than RAM + swap therefore cannot be mapped at all:
a 40 GiB file on a 23 GiB machine without swap fails with ENOMEM. ``MAP_NORESERVE`` takes the
mapping out of that charge. Pages come from the page cache as they are read; a write copies its
page into private memory, and the file never changes. Under strict overcommit
(``vm.overcommit_memory = 2``) the kernel ignores the flag, and the charge applies again.

Used for every table the suite maps: the feature cache's token files, the evaluation's spilled
tables and the feedback / serve gallery files.
"""

from __future__ import annotations

import mmap
import platform
import sys
from pathlib import Path

import numpy as np
import torch

#: Linux's MAP_NORESERVE where its value is 0x4000 (Python's mmap module does not export it)
MAP_NORESERVE = (
    0x4000 if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64", "arm64") else 0
)


def map_private(path: str | Path) -> mmap.mmap:
    """The whole file, mapped copy-on-write without reserving memory (see the module)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE | MAP_NORESERVE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def map_tensor(path: str | Path, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The whole file as one flat tensor of ``dtype`` over :func:`map_private` (the tensor keeps
    the mapping alive)."""
    return torch.frombuffer(map_private(path), dtype=dtype)


def map_npy(path: str | Path) -> np.ndarray:
    """The array of a ``.npy`` file over :func:`map_private` (what ``np.load(mmap_mode="c")``
    gives, without its memory charge)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:  # format 3.0 (utf-8 field names): numpy's own, charged mapping
            return np.load(path, mmap_mode="c")
        shape, fortran, dtype = read_header[version](f)
        offset = f.tell()
    return np.ndarray(shape, dtype, buffer=map_private(path), offset=offset, order="F" if fortran else "C")
