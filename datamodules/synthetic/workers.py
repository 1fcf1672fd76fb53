"""Run independent pieces of SynthScenes generation in forked worker processes.

Generation is pure Python and numpy (scene sampling, Pillow drawing, PNG encoding,
relevance checks), so threads would serialise on the GIL; forked processes share the
parent's memory without pickling it and start in milliseconds. Each task's result depends
only on its inputs, so the output is the same whatever the number of workers.
Where ``fork`` does not exist (Windows), or in a daemonic process (e.g. a DataLoader worker,
which may not have children), everything runs in process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: more processes than this gain little on 5,500 small images
MAX_WORKERS = 8


def worker_count(requested: int | None = None) -> int:
    """``requested``, or the CPUs this process may use (at most :data:`MAX_WORKERS`)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"generation workers must be >= 1, got {requested}")
        return requested
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_WORKERS))


def fork_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> list[R]:
    """``[fn(t) for t in tasks]``, in order, over ``workers`` forked processes.

    ``initializer(*initargs)`` runs once per worker before its first task (and once here
    when running in process); under fork its arguments are inherited, not pickled.
    """
    if workers <= 1 or len(tasks) <= 1 or "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
        if initializer is not None:
            initializer(*initargs)
        return [fn(t) for t in tasks]
    with mp.get_context("fork").Pool(min(workers, len(tasks)), initializer, initargs) as pool:
        return pool.map(fn, tasks, chunksize=1)
