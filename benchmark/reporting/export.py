"""The machine-readable twin of the reports: ``results.csv`` (and ``results.parquet``).

The tidy frame of :func:`benchmark.results.results_frame` (one row per run and metric:
file, model, dataset, size, tag, seed, task, metric, value), as CLIP_benchmark users get it:
``results.csv`` always, ``results.parquet`` too when pyarrow is importable (pandas' parquet
engine; the suite does not depend on it). Both are written atomically.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pandas as pd

from benchmark.atomic import atomic_write_bytes, atomic_write_text

CSV_NAME, PARQUET_NAME = "results.csv", "results.parquet"


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def write_frame(frame: pd.DataFrame, out_dir: Path, *, parquet: bool | None = None) -> list[Path]:
    """Write ``frame`` as ``results.csv`` (and ``results.parquet`` when ``parquet``, default:
    when pyarrow is importable) under ``out_dir``; the paths written."""
    out_dir = Path(out_dir)
    paths = [atomic_write_text(out_dir / CSV_NAME, frame.to_csv(index=False, lineterminator="\n"))]
    if parquet_available() if parquet is None else parquet:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False, engine="pyarrow")
        paths.append(atomic_write_bytes(out_dir / PARQUET_NAME, buf.getvalue()))
    return paths
