"""A report table independent of its output format, and the rule that makes a value bold.

Columns carry a direction (``higher`` / ``lower`` is better, or none) and a group (empty for
the suite's own numbers, the paper's label for its reference columns). Rows carry one or
more text labels and one :class:`~benchmark.reporting.estimates.Cell` per column.

Bold rule: in every column with a direction, the best non-missing value is bold, compared
at the precision it is shown with (so equal-looking values are bold together); a column
with fewer than two values has no bold. Paper columns are judged on their own, never
against ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.reporting.estimates import HIGHER, LOWER, Cell


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    better: str | None = None
    fmt: str = ".4f"  # format spec of the shown value
    group: str = ""  # "" = ours; otherwise a group label shown above the columns

    def __post_init__(self) -> None:
        if self.better not in (None, HIGHER, LOWER):
            raise ValueError(f"Column {self.key!r}: better must be 'higher', 'lower' or None, got {self.better!r}")


@dataclass
class Row:
    labels: tuple[str, ...]
    cells: dict[str, Cell]


@dataclass
class Table:
    title: str
    label_headers: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = [c.key for c in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {self.title!r}: duplicate column keys {keys}")

    def cell(self, row: Row, column: Column) -> Cell:
        return row.cells.get(column.key, Cell(None))

    def bold_rows(self, column: Column) -> set[int]:
        """Indices of the rows whose value in ``column`` is bold."""
        if column.better is None:
            return set()
        shown = {
            i: float(format(c.value, column.fmt).replace(",", ""))
            for i, r in enumerate(self.rows)
            if not (c := self.cell(r, column)).missing
        }
        if len(shown) < 2:
            return set()
        best = max(shown.values()) if column.better == HIGHER else min(shown.values())
        return {i for i, v in shown.items() if v == best}
