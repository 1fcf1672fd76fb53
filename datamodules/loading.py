"""DataLoader settings of a run: how many worker processes, pinned memory, prefetching.

``DataConfig.num_workers`` is ``None`` (auto) by default. What auto means depends on the
dataset (``RetrievalDataModule.parallel_loading``):

* generated, in-memory data (SynthScenes): 0 workers. Its 64 px images are decoded once
  and cached in memory, so workers have little to parallelise, each worker fills its own
  copy of the cache, and every batch crosses a process boundary: on 2 cores 4 epochs of
  the tiny training loader took 4.3-4.6 s in process, 5.2-6.5 s with 1 worker and 8.1-8.9 s
  with 2 (``scripts/bench_image_loading.py --synthetic``; docs/experiments/data-loading.md).
  Workers would also change the training run: each training item draws its caption and
  template from the global generator, which in a worker is the worker's own seeded
  generator instead of the main process's (tests/test_data_loading.py), so the tiny
  benchmark's metrics stay exactly those of 0 workers only with 0 workers.
* real datasets read from disk: the CPUs this process may use, shared by the processes of
  the node (one per device under DDP), one left to the main process, at most
  :data:`AUTO_WORKERS_CAP`.

An explicit count is taken as given, within :data:`MAX_WORKERS` (checked by ``DataConfig``)
and ``WORKERS_PER_CPU`` times the usable CPUs (checked by :func:`resolve_workers` when the
DataModule is built): more is a fork storm, not a setting.

Pinned memory (``pin_memory=True``) is used when the run's device is a CUDA GPU: batches are
copied to page-locked memory by a background thread so the host-to-device copy can overlap
compute. ``prefetch_factor`` is PyTorch's default of 2 batches per worker, stated explicitly:
``2 x workers`` batches in flight keep every worker busy while the model consumes one, and
bound the memory held (a batch of 256 images at 224 px is 154 MB in fp32).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: DataConfig refuses more workers than this whatever the machine (a typo, not a setting)
MAX_WORKERS = 64
#: an explicit count above this many workers per usable CPU is refused when the DataModule is built
WORKERS_PER_CPU = 4
#: auto never starts more workers than this per process: one worker decodes and transforms
#: a 640x480 JPEG to 224 px in ~7.4 ms (draft decoding; scripts/bench_image_loading.py on a
#: loaded 2-core machine), so 8 serve ~1,000 images/s -- above the ~600 images/s that a
#: ViT-g/14 forward (0.52 TFLOP per image, scale.md) allows at 300 TFLOP/s
AUTO_WORKERS_CAP = 8
#: batches each worker loads ahead (PyTorch's default, stated so that it is a decision)
PREFETCH_FACTOR = 2
#: device types whose host-to-device copies gain from pinned memory
PINNED_DEVICE_TYPES = ("cuda",)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LoaderRuntime:
    """What the run's hardware says about loading (not part of the config: it does not change
    a result). ``device_type``: the torch device type the batches go to ("cpu", "cuda", "mps");
    ``processes_per_node``: processes on this machine that each start their own workers (the
    devices per node under DDP)."""

    device_type: str = "cpu"
    processes_per_node: int = 1

    def __post_init__(self) -> None:
        if not self.device_type or not isinstance(self.device_type, str):
            raise ValueError(f"LoaderRuntime.device_type must be a torch device type, got {self.device_type!r}")
        if self.processes_per_node < 1:
            raise ValueError(f"LoaderRuntime.processes_per_node must be >= 1, got {self.processes_per_node}")

    @classmethod
    def of_trainer(cls, trainer: Any) -> LoaderRuntime:
        """The runtime of a Lightning Trainer: its root device's type and its devices per node."""
        return cls(str(trainer.strategy.root_device.type), max(1, int(trainer.num_devices)))


def auto_workers(runtime: LoaderRuntime, cpus: int | None = None) -> int:
    """Workers per process for disk-read data: the node's usable CPUs split among its
    processes, one kept for the main process, at most :data:`AUTO_WORKERS_CAP`."""
    per_process = (cpus or usable_cpus()) // runtime.processes_per_node
    return max(0, min(AUTO_WORKERS_CAP, per_process - 1))


def resolve_workers(requested: int | None, parallel: bool, runtime: LoaderRuntime, cpus: int | None = None) -> int:
    """The DataLoader worker count: ``requested`` as given (refused above ``WORKERS_PER_CPU``
    x the usable CPUs), or for auto (None) 0 without ``parallel`` loading, else :func:`auto_workers`."""
    cpus = cpus or usable_cpus()
    if requested is None:
        return auto_workers(runtime, cpus) if parallel else 0
    bound = WORKERS_PER_CPU * cpus
    if requested > bound:
        raise ValueError(
            f"data.num_workers={requested} is more than {WORKERS_PER_CPU} worker processes per usable CPU "
            f"({cpus} CPUs here, so at most {bound}); expected null (auto) or an integer in [0, {bound}]"
        )
    return requested


def loader_kwargs(workers: int, runtime: LoaderRuntime) -> dict[str, Any]:
    """The DataLoader arguments for ``workers`` worker processes on ``runtime``'s device."""
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": runtime.device_type in PINNED_DEVICE_TYPES,
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        kwargs["prefetch_factor"] = PREFETCH_FACTOR
    return kwargs
