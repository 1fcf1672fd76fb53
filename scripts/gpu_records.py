"""The JSON records of the GPU check scripts (``gpu_eval.py``, ``gpu_train.py``): written atomically
through the suite's own writer, read back as ``None`` when absent or unreadable (a cut-off run leaves
what it wrote, and the summary shows what is there)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.atomic import atomic_write_json


def write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
