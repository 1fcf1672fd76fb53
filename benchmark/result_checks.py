"""What a readable result file is: the checks every loaded result file passes.

:func:`check_result` refuses, with a :class:`ResultFileError` that names the file and the
field and says what was expected:

* a schema version this suite does not read (:data:`KNOWN_SCHEMAS`);
* a missing required field (:data:`REQUIRED_KEYS`), or one of the wrong type (model,
  dataset, size and tag are non-empty strings, the seed an integer >= 0, metrics a flat
  object);
* a metric that is not a number or null (a string such as ``"0.5"``, a boolean, a list), a
  non-finite one (``Infinity``, ``NaN``: the writer stores those as null), or one outside
  the range its name implies (:data:`METRIC_RANGES`: R@k, MRR, Hits@k, accuracies in [0, 1];
  Spearman's rho in [-1, 1]; ranks >= 1; counts, costs and query lengths >= 0). Sim is only
  required to be finite: it is the mean raw score of the model's own scoring
  (``benchmark/metrics/retrieval.py``), a cosine for the shipped models but not bounded
  for every model one may add;
* per-query arrays of the wrong kind: ``<direction>/rank`` non-negative integers (1-based,
  0 = a query without a relevant item), ``<direction>/sim`` finite numbers or null,
  ``text_lengths`` integers >= -1, ``complexity`` integers or null.

A refused file stops the report (``bench report`` exits 2): a report that silently leaves a
run out, or tabulates R@1 = 7.5, is a wrong report. Nothing here reads the disk.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
#: schema versions this suite reads
KNOWN_SCHEMAS = (1,)
REQUIRED_KEYS = (
    "schema",
    "model",
    "dataset",
    "size",
    "tag",
    "config",
    "config_hash",
    "seed",
    "metrics",
    "environment",
    "provenance",
    "timings",
)
LABEL_KEYS = ("model", "dataset", "size", "tag")
RHO_SLACK = 1e-9  # rounding of a correlation coefficient


class ResultFileError(ValueError):
    """A result file that cannot be read, lacks required fields or holds impossible values."""


@dataclass(frozen=True)
class Range:
    """The closed interval a metric lies in (``None``: unbounded on that side)."""

    pattern: re.Pattern[str]
    lo: float | None
    hi: float | None

    def holds(self, value: float) -> bool:
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def describe(self) -> str:
        if self.hi is None:
            return f">= {self.lo:g}"
        return f"in [{self.lo:g}, {self.hi:g}]"


def _r(pattern: str, lo: float | None, hi: float | None) -> Range:
    return Range(re.compile(pattern), lo, hi)


#: metric name -> its range; the first pattern that matches the key wins, other keys need only be finite
METRIC_RANGES: tuple[Range, ...] = (
    _r(r"(^|/)(R@\d+|Hits@\d+|MRR|never_found|accuracy|majority_accuracy|hist_\d+)$", 0.0, 1.0),
    _r(r"(^|/)spearman_complexity$", -1.0 - RHO_SLACK, 1.0 + RHO_SLACK),
    _r(r"(^|/)(mean_rank|median_rank)$", 1.0, None),
    _r(r"(^|/)(n_queries|n_skipped|n|success_k|BRI|rounds_to_success_mean|rounds_to_success_median)$", 0.0, None),
    _r(r"^(gflops|qlen|speed)/", 0.0, None),
    _r(r"^(memory_mb|memory_mb_reserved|throughput_img_s|throughput_cold_s|throughput_query_s)$", 0.0, None),
)


def _fail(name: str, message: str) -> ResultFileError:
    return ResultFileError(f"{name}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def metric_range(key: str) -> Range | None:
    return next((r for r in METRIC_RANGES if r.pattern.search(key)), None)


def check_metric(name: str, key: str, value: Any) -> None:
    """One metric: null, or a finite number within the range of its name."""
    if value is None:
        return
    if not _is_number(value):
        raise _fail(name, f"field metrics.{key} must be a number or null, got {value!r}")
    if not math.isfinite(value):
        raise _fail(name, f"field metrics.{key} must be finite (non-finite values are stored as null), got {value!r}")
    rng = metric_range(key)
    if rng is not None and not rng.holds(value):
        raise _fail(name, f"field metrics.{key} = {value!r} is out of range (expected {rng.describe()})")


def _check_array(name: str, key: str, values: Any, ok, expected: str) -> None:
    if not isinstance(values, list):
        raise _fail(name, f"field per_query.{key} must be a list ({expected})")
    for i, v in enumerate(values):
        if not ok(v):
            raise _fail(name, f"field per_query.{key}[{i}] = {v!r}: expected {expected}")


def _sim_ok(v: Any) -> bool:
    return v is None or (_is_number(v) and math.isfinite(v))


#: per-query key pattern -> (check of one entry, what is expected); other keys (feedback arms) are
#: checked by their own reader
PER_QUERY: tuple[tuple[re.Pattern[str], Any, str], ...] = (
    (re.compile(r"(^|/)rank$"), lambda v: _is_int(v) and v >= 0, "integer ranks >= 0 (1-based; 0 = no relevant item)"),
    (re.compile(r"(^|/)sim$"), _sim_ok, "finite similarities or null"),
    (re.compile(r"^text_lengths$"), lambda v: _is_int(v) and v >= -1, "integer query lengths >= -1 (-1: none)"),
    (re.compile(r"^complexity$"), lambda v: v is None or _is_int(v), "integer complexity levels or null"),
)


def check_per_query(name: str, per_query: Any) -> None:
    if not isinstance(per_query, dict):
        raise _fail(name, "field per_query must be an object of per-query arrays")
    for key, values in per_query.items():
        for pattern, ok, expected in PER_QUERY:
            if pattern.search(str(key)):
                _check_array(name, str(key), values, ok, expected)
                break


def check_result(data: Any, name: str) -> None:
    """Refuse ``data`` (a parsed result file called ``name``) unless it is a readable result
    file of a known schema with sane values (see the module docstring)."""
    if not isinstance(data, dict):
        raise _fail(name, "a result file holds a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _fail(name, f"missing field(s) {', '.join(missing)}")
    schema = data["schema"]
    if not _is_int(schema) or schema not in KNOWN_SCHEMAS:
        raise _fail(
            name,
            f"field schema: unknown schema version {schema!r} (this suite reads "
            f"{', '.join(map(str, KNOWN_SCHEMAS))}); rerun with this version of the suite",
        )
    for key in LABEL_KEYS:
        if not isinstance(data[key], str) or not data[key]:
            raise _fail(name, f"field {key} must be a non-empty string, got {data[key]!r}")
    if "task" in data and (not isinstance(data["task"], str) or not data["task"]):
        raise _fail(name, f"field task must be a non-empty string, got {data['task']!r}")
    if not _is_int(data["seed"]) or data["seed"] < 0:
        raise _fail(name, f"field seed must be an integer >= 0, got {data['seed']!r}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict):
        raise _fail(name, "field metrics must be an object of metric name -> number")
    for key, value in metrics.items():
        check_metric(name, key, value)
    if "per_query" in data:
        check_per_query(name, data["per_query"])
