"""The JSON records of the GPU check scripts (``gpu_eval.py``, ``gpu_train.py``): written atomically
through the suite's own writer, read back as ``None`` when absent or unreadable (a cut-off run leaves
what it wrote, and the summary shows what is there)."""

from __future__ import annotations

from pathlib import Path

from benchmark.atomic import atomic_write_json
from datamodules.safe_json import JsonReadError
from datamodules.safe_json import read_json as safe_read_json


def write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def read_json(path: Path) -> dict | None:
    try:
        data = safe_read_json(Path(path), what="GPU check record")
    except JsonReadError:
        return None
    return data if isinstance(data, dict) else None
