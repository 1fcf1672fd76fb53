"""Per-query values of a result file, and the check that two runs scored the same queries.

A result file's ``per_query`` holds, in global query order, ``"<direction>/rank"`` (rank of
the first relevant item; 0 = skipped query), ``"<direction>/sim"`` (t2i, i2t), ``text_lengths``
(-1 where the model has no per-query length) and ``complexity``. From them:

* ``sim``: the query's similarity with its source item (NaN where absent);
* ``r1``, ``r5``: 1.0 if rank <= 1 (5), else 0.0 (NaN for a skipped query);
* ``mrr``: 1 / rank (NaN for a skipped query);
* ``qlen``: the number of query vectors the model spent on the instruction (t2i only).

Their means are exactly the result's ``t2i/Sim``, ``t2i/R@1``, ``t2i/R@5``, ``t2i/MRR`` and
``qlen/mean``. :data:`MEASURES` are the ones every table and paired comparison reads; ``r1`` is
read where asked for (the ablations' paired differences, the conditioning claim).
Two runs can be paired only when they evaluated the same queries in the same order:
:func:`check_same_queries` compares everything that decides the queries and refuses with a
:class:`PairingError` naming the field that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.results import ResultFileError, object_field

R_AT = 5
MEASURES = ("sim", "r5", "mrr", "qlen")


class PairingError(ValueError):
    """Two runs that did not score the same queries (so no paired comparison)."""


def result_name(result: dict) -> str:
    return Path(result.get("_path", f"{result.get('model')}__{result.get('dataset')}__{result.get('tag')}")).name


def _array(result: dict, key: str, *, dtype=np.float64) -> np.ndarray | None:
    per_query = result.get("per_query")
    if not isinstance(per_query, dict) or key not in per_query:
        return None
    values = per_query[key]
    if not isinstance(values, list):
        raise ResultFileError(f"{result_name(result)}: per_query.{key} must be a list of numbers")
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ResultFileError(f"{result_name(result)}: per_query.{key} must be a list of numbers ({e})") from None


@dataclass(frozen=True)
class QueryValues:
    """The per-query columns of one direction of one run (``None`` where the file has none)."""

    n: int
    columns: dict[str, np.ndarray]
    complexity: np.ndarray | None

    def get(self, measure: str) -> np.ndarray | None:
        return self.columns.get(measure)


def query_values(result: dict, direction: str = "t2i") -> QueryValues | None:
    """The per-query values of ``direction``, or None if the file holds no per-query ranks."""
    rank = _array(result, f"{direction}/rank")
    if rank is None:
        return None
    n = rank.size
    columns: dict[str, np.ndarray] = {}
    ranked = rank > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        columns["r1"] = np.where(ranked, (rank <= 1).astype(np.float64), np.nan)
        columns["r5"] = np.where(ranked, (rank <= R_AT).astype(np.float64), np.nan)
        columns["mrr"] = np.where(ranked, 1.0 / np.where(ranked, rank, 1.0), np.nan)
    sim = _array(result, f"{direction}/sim")
    if sim is not None:
        _same_length(result, f"{direction}/sim", sim, n)
        columns["sim"] = sim
    if direction == "t2i":
        lengths = _array(result, "text_lengths")
        if lengths is not None:
            _same_length(result, "text_lengths", lengths, n)
            if lengths.size and np.all(lengths >= 0):
                columns["qlen"] = lengths
    complexity = _array(result, "complexity") if direction == "t2i" else None
    if complexity is not None:
        _same_length(result, "complexity", complexity, n)
    return QueryValues(n, columns, complexity)


def _same_length(result: dict, key: str, values: np.ndarray, n: int) -> None:
    if values.size != n:
        raise ResultFileError(f"{result_name(result)}: per_query.{key} has {values.size} entries, the ranks have {n}")


# -- which queries a run scored ----------------------------------------------------------------


def _data_identity(result: dict) -> dict[str, Any]:
    """Everything that decides the evaluated queries and their order."""
    config = object_field(result, "config")
    data = object_field(config, "data")
    prov = object_field(result, "provenance")
    skipped = result["data"].get("skipped") if isinstance(result.get("data"), dict) else None
    return {
        "dataset": result.get("dataset"),
        "provenance.split": prov.get("split"),
        "provenance.n_queries": prov.get("n_queries"),
        "provenance.n_gallery_images": prov.get("n_gallery_images"),
        "provenance.annotations_sha256": prov.get("annotations_sha256"),
        "data.skipped": skipped,
        "config.data.options": data.get("options"),
        "config.data.templates": data.get("templates"),
        "config.data.eval_split": data.get("eval_split"),
        "config.data.max_eval_images": data.get("max_eval_images"),
        "seed (picks each query's instruction template)": result.get("seed"),
    }


def check_same_queries(a: dict, b: dict, direction: str = "t2i") -> tuple[QueryValues, QueryValues]:
    """The per-query values of two runs, after checking they scored the same queries in the
    same order; :class:`PairingError` (naming both files and the field) otherwise."""
    na, nb = result_name(a), result_name(b)
    ia, ib = _data_identity(a), _data_identity(b)
    for field in ia:
        if ia[field] != ib[field]:
            raise PairingError(
                f"{na} and {nb} did not score the same queries: {field} differs "
                f"({_short(ia[field])} vs {_short(ib[field])}); a paired test needs the same queries"
            )
    if ia["provenance.annotations_sha256"] is None:
        raise PairingError(
            f"{na}: provenance.annotations_sha256 is missing, so the queries of {na} and {nb} "
            "cannot be shown to be the same"
        )
    qa, qb = query_values(a, direction), query_values(b, direction)
    for name, q in ((na, qa), (nb, qb)):
        if q is None:
            raise PairingError(f"{name}: no per_query.{direction}/rank (per-query ranks are needed for a paired test)")
    assert qa is not None and qb is not None
    if qa.n != qb.n:
        raise PairingError(f"{na} has {qa.n} {direction} queries and {nb} has {qb.n}: not the same queries")
    if qa.complexity is not None and qb.complexity is not None and not np.array_equal(qa.complexity, qb.complexity):
        raise PairingError(f"{na} and {nb}: per_query.complexity differs, so the queries are not in the same order")
    return qa, qb


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
