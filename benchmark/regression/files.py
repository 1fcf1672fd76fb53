"""Reading the files ``bench regress`` compares: baseline and new result files, safely.

Each file is read with :func:`datamodules.safe_json.read_json` (non-UTF-8, a directory, deep
nesting, huge numbers, NaN: a clear error naming the file), must hold a JSON object with a
``metrics`` object, and every metric must be a finite number or null: a metric given as the
string ``"0.5"`` (or a list, or true) is refused with the file and the key named, instead of
being compared as something it is not. Errors are :class:`~benchmark.config.ConfigError`
(``bench regress`` exits with code 2).
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmark.config import ConfigError
from datamodules.safe_json import JsonReadError, read_json


def check_metrics(result: dict, source: str) -> dict[str, float | None]:
    """``result["metrics"]``, every value a finite number or null (else a ConfigError naming it)."""
    metrics = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(metrics, dict):
        raise ConfigError(f"{source}: expected a result file (a JSON object with a 'metrics' object)")
    for key, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and math.isfinite(value)):
            raise ConfigError(
                f"{source}: metric {key!r} is {value!r} ({type(value).__name__}); expected a finite number or null"
            )
    return metrics


def read_result(path: Path, what: str = "result file") -> dict:
    """A result file (baseline or new), read safely and its metrics checked."""
    try:
        result = read_json(path, what=what)
    except JsonReadError as e:
        raise ConfigError(str(e)) from None
    check_metrics(result, f"{what} {path}")
    return result
