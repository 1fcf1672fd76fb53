"""Peak memory of a step: GPU allocator peaks, or the peak RSS of a fresh CPU process.

* GPU: a separate pass after ``torch.cuda.reset_peak_memory_stats()``;
  ``max_memory_allocated`` (primary, comparable across runs) and ``max_memory_reserved``.
* CPU: peak resident set size of a *fresh* process (a peak cannot be reset in-process, and
  ``tracemalloc`` does not see torch tensors), so :func:`peak_rss_mb_in_fresh_process` runs
  ``module:function`` with JSON keyword arguments in a new interpreter and reads its
  ``VmHWM`` from ``/proc/self/status``. (Not ``ru_maxrss``: Linux carries it across
  ``fork``/``execve``, so a child started from a big parent reports the parent's peak.) The figure includes the interpreter and imported libraries; report
  it as such, and compare models measured the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import torch

_PROBE = """
import importlib, json, sys
spec, kwargs = sys.argv[1], json.loads(sys.argv[2])
module, _, name = spec.partition(":")
getattr(importlib.import_module(module), name)(**kwargs)
with open("/proc/self/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", hwm)
"""


def gpu_peak_memory_mb(step: Callable[[], object], device: str = "cuda") -> dict[str, float]:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        step()
    torch.cuda.synchronize(device)
    return {
        "max_memory_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "max_memory_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
    }


def peak_rss_mb_in_fresh_process(target: str, timeout_s: float = 600, **kwargs) -> float:
    """Run ``target`` ("module:function") with ``kwargs`` in a new Python process; its peak RSS in MB."""
    if ":" not in target:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, target, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {target} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("PEAK_RSS_KB "):
            return int(line.split()[1]) / 1024  # VmHWM is in kB
    raise RuntimeError(f"memory probe {target} printed no PEAK_RSS_KB line")
