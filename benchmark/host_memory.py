"""Give freed host memory back to the operating system (glibc ``malloc_trim``).

The evaluation encodes the gallery batch by batch; each batch's embeddings are copied into the
metric's preallocated state buffer and freed. glibc keeps such freed heap chunks mapped, and at
evaluation scale they add up: feeding 30,000 BLIP-2 embeddings (4 MiB batches) into the metric
ended at 1.21-1.23 GiB RSS in two of three runs and at 0.81 GiB in the third; with
``malloc_trim(0)`` after every batch, 0.80 GiB in all three, at about 0.2 ms per call
(docs/experiments/scale.md). Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
        return None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS; True where it could be asked (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
