"""Result files: the schema, atomic writing and loading.

One JSON file per run, ``results/<model>__<dataset>__<tag>.json`` (a task other than
retrieval: ``<model>__<dataset>__<task>__<tag>.json``, with ``"task"`` recorded). It holds the model,
dataset, size, the whole config (and its hash), the seed, flat metric keys with the
direction in the key (``t2i/R@5``), per-query arrays (for bootstrap intervals), the
environment (package versions, device, threads, git revision; :mod:`benchmark.environment`),
provenance (what was actually evaluated, a checksum of the annotations) and timings. Files are written to a
temporary file in the same folder and renamed into place, so an interrupted or failed run
never leaves a truncated file nor replaces a good one.

Reading: :func:`load_result` reads one file (the raw read is the one call :func:`read_json`)
and validates it (:mod:`benchmark.result_checks`: schema version, field types, metric
ranges, per-query arrays), raising :class:`ResultFileError` naming the file and the field;
:func:`load_result_files` reads every ``*.json`` of a folder (a missing folder is an error);
:func:`load_results` gives them as a tidy pandas DataFrame, one row per run and metric
(:data:`FRAME_COLUMNS`), the table CLIP_benchmark users get.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.atomic import atomic_write_json as write_json
from benchmark.result_checks import SCHEMA_VERSION, ResultFileError, check_result
from datamodules.safe_json import JsonReadError
from datamodules.safe_json import read_json as safe_read_json

#: the columns of :func:`load_results`: the run (``file``: the result file's name), then one metric
RUN_COLUMNS = ("file", "model", "dataset", "size", "tag", "seed", "task")
FRAME_COLUMNS = (*RUN_COLUMNS, "metric", "value")
__all__ = [
    "FRAME_COLUMNS",
    "SCHEMA_VERSION",
    "ResultFileError",
    "atomic_write_json",
    "load_result",
    "load_result_files",
    "load_results",
    "read_json",
    "results_frame",
    "task_of",
]


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


def read_json(path: Path, what: str = "result file") -> Any:
    """The raw read of a result file through the suite's safe JSON reader
    (:mod:`datamodules.safe_json`): parsed JSON, or :class:`ResultFileError` naming the file (not
    UTF-8, nested too deep, a directory, a huge integer, bad JSON), never a traceback. ``what``
    says what the file is in the message (e.g. ``"baseline result file"``)."""
    try:
        return safe_read_json(Path(path), what=what)
    except JsonReadError as e:
        raise ResultFileError(str(e)) from None


def load_result(path: Path, what: str | None = None) -> dict:
    """One result file, validated (:func:`benchmark.result_checks.check_result`); ``what`` (e.g.
    ``"baseline result file"``) prefixes the path in error messages."""
    data = read_json(path, what or "result file")
    check_result(data, str(path) if what is None else f"{what} {path}")
    return data


def task_of(result: dict) -> str:
    """The task a result file holds (files written before tasks existed are retrieval runs)."""
    return str(result.get("task", "retrieval"))


def object_field(record: dict, key: str) -> dict[str, Any]:
    """``record[key]`` when it is a JSON object, else an empty dict (absent, null or malformed)."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def load_result_files(directory: Path, task: str | None = None) -> list[dict]:
    """Every ``*.json`` directly in ``directory`` (sorted by name), each with its path under
    ``"_path"``; a bad file or a missing folder raises :class:`ResultFileError`. With ``task``,
    only the results of that task (``bench report`` tabulates retrieval runs only: an i2i,
    VQA or feedback file has other metrics and must not enter a retrieval table)."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        raise ResultFileError(f"{directory}: results folder {what} (run `bench run` first, or pass --results-dir)")
    results = [load_result(p) | {"_path": str(p)} for p in sorted(directory.glob("*.json"))]
    return [r for r in results if task is None or task_of(r) == task]


def results_frame(results: list[dict]) -> pd.DataFrame:
    """Loaded result files as a tidy frame: one row per run and metric (:data:`FRAME_COLUMNS`);
    ``value`` is a float (NaN where the file holds null), ``file`` the result file's name."""
    rows = []
    for r in results:
        run = (Path(r.get("_path", "")).name, r["model"], r["dataset"], r["size"], r["tag"], r["seed"], task_of(r))
        rows += [(*run, k, math.nan if v is None else float(v)) for k, v in r["metrics"].items()]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    return frame.astype({"seed": "int64", "value": "float64"})


def load_results(directory: Path, task: str | None = None) -> pd.DataFrame:
    """Every result file in ``directory`` (of ``task`` only, if given) as a tidy frame
    (:func:`results_frame`); bad files and a missing folder raise :class:`ResultFileError`."""
    return results_frame(load_result_files(directory, task))
