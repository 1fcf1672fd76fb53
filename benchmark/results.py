"""Result files: the schema, atomic writing, loading, and the recorded environment.

One JSON file per run, ``results/<model>__<dataset>__<tag>.json`` (a task other than
retrieval: ``<model>__<dataset>__<task>__<tag>.json``, with ``"task"`` recorded). It holds the model,
dataset, size, the whole config (and its hash), the seed, flat metric keys with the
direction in the key (``t2i/R@5``), per-query arrays (for bootstrap intervals), the
environment (package versions, device, threads, git revision), provenance (what was
actually evaluated, a checksum of the annotations) and timings. Files are written to a
temporary file in the same folder and renamed into place, so an interrupted or failed run
never leaves a truncated file nor replaces a good one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmark.atomic import atomic_write_json as write_json

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema", "model", "dataset", "size", "tag", "config", "config_hash", "seed", "metrics",
                 "environment", "provenance", "timings")
PACKAGES = ("instructsee-bench", "torch", "lightning", "transformers", "torchmetrics", "tokenizers", "numpy",
            "pillow", "fvcore", "pandas")


class ResultFileError(ValueError):
    """A result file that cannot be read or lacks required fields."""


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: strict JSON, readable by any tool."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` (non-finite floats as null) as strict JSON, atomically (:mod:`benchmark.atomic`)."""
    write_json(path, _finite(data))


def load_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path}: cannot read result file ({e})") from e
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: a result file holds a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ResultFileError(f"{path}: missing field(s) {', '.join(missing)}")
    return data


def task_of(result: dict) -> str:
    """The task a result file holds (files written before tasks existed are retrieval runs)."""
    return str(result.get("task", "retrieval"))


def load_results(directory: Path, task: str | None = None) -> list[dict]:
    """Every ``*.json`` directly in ``directory`` (sorted by name); bad files raise. With
    ``task``, only the results of that task (``bench report`` tabulates retrieval runs only:
    an i2i, VQA or feedback file has other metrics and must not enter a retrieval table)."""
    results = [load_result(p) | {"_path": str(p)} for p in sorted(Path(directory).glob("*.json"))]
    return [r for r in results if task is None or task_of(r) == task]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(device: str | None = None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "packages": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "device": device or ("cuda" if cuda else "cpu"),
        "cuda_device_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda,
        "git": git_revision(),
    }
