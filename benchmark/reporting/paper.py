"""The paper's own numbers, read from ``benchmark/reference/paper_tables.json``.

They are shown beside ours as reference columns labelled ``paper (RTX 4090, real data)``:
different hardware, different (real) data and an undefined Sim, so they are a reference for
orders and directions, never a target the suite's tiny runs should match. Each table in the
file carries a note saying where it was transcribed from; the loader checks the structure
and names the field when something is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from datamodules.safe_json import JsonReadError, read_json

PAPER_TABLES = Path(__file__).resolve().parent.parent / "reference" / "paper_tables.json"


class PaperTablesError(ValueError):
    """The reference file is unreadable or malformed; the message names the field."""


@dataclass(frozen=True)
class PaperRow:
    name: str
    values: dict[str, float | None]  # measure name -> value (None where the paper has none)
    sim_by_dataset: dict[str, float | None]


@dataclass(frozen=True)
class PaperTable:
    source: str
    rows: dict[str, PaperRow]  # model name (comparison) or arm key (ablations)


@dataclass(frozen=True)
class PaperTables:
    label: str
    paper: str
    caveats: tuple[str, ...]
    datasets: dict[str, str]  # suite dataset name -> the paper's column name
    comparison: PaperTable
    ablations: dict[str, PaperTable]

    def comparison_value(self, model: str, measure: str, dataset: str | None = None) -> float | None:
        row = self.comparison.rows.get(model)
        if row is None:
            return None
        if measure == "sim":
            return row.sim_by_dataset.get(dataset) if dataset else None
        return row.values.get(measure)

    def has_dataset(self, dataset: str) -> bool:
        return dataset in self.datasets


def _need(obj, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise PaperTablesError(f"{PAPER_TABLES.name}: {where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise PaperTablesError(f"{PAPER_TABLES.name}: {where}.{key} must be a {kind.__name__}")
    return value


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PaperTablesError(f"{PAPER_TABLES.name}: {where} must be a number or null, got {value!r}")
    return float(value)


def _row(raw, where: str) -> PaperRow:
    name = _need(raw, "name", str, where)
    sim_raw = raw.get("sim")
    by_dataset: dict[str, float | None] = {}
    values: dict[str, float | None] = {}
    if isinstance(sim_raw, dict):
        by_dataset = {k: _number(v, f"{where}.sim.{k}") for k, v in sim_raw.items()}
    elif "sim" in raw:
        values["sim"] = _number(sim_raw, f"{where}.sim")
    for key, value in raw.items():
        if key not in ("name", "sim"):
            values[key] = _number(value, f"{where}.{key}")
    return PaperRow(name, values, by_dataset)


def _table(raw, where: str) -> PaperTable:
    source = _need(raw, "source", str, where)
    rows = _need(raw, "rows", dict, where)
    return PaperTable(source, {k: _row(v, f"{where}.rows.{k}") for k, v in rows.items()})


def load_paper_tables(path: Path = PAPER_TABLES) -> PaperTables:
    try:
        raw = read_json(Path(path), what="paper tables file")
    except JsonReadError as e:
        raise PaperTablesError(f"{path}: cannot read the paper's reference tables ({e})") from e
    ablations = _need(raw, "ablations", dict, "top")
    return PaperTables(
        label=_need(raw, "label", str, "top"),
        paper=_need(raw, "paper", str, "top"),
        caveats=tuple(str(c) for c in _need(raw, "caveats", list, "top")),
        datasets={k: str(v) for k, v in _need(raw, "datasets", dict, "top").items()},
        comparison=_table(_need(raw, "comparison", dict, "top"), "comparison"),
        ablations={k: _table(v, f"ablations.{k}") for k, v in ablations.items()},
    )
