"""Render a :class:`~benchmark.reporting.table_model.Table` as a Markdown (GFM) table.

Values are printed with their column's precision, the interval after them as ``[lo, hi]``,
bold per the table's bold rule, ``–`` where a value is missing. Every piece of text (title,
labels, notes) is escaped; the paper's reference columns carry their group label in the
header (``paper (RTX 4090, real data): Sim``). ``↑`` / ``↓`` mark the direction.
"""

from __future__ import annotations

from benchmark.reporting.escape import markdown_inline as esc
from benchmark.reporting.estimates import HIGHER, LOWER, Cell
from benchmark.reporting.table_model import Column, Table

MISSING = "–"
ARROWS = {HIGHER: " ↑", LOWER: " ↓", None: ""}


def number(value: float, fmt: str) -> str:
    return format(value, fmt)


def format_cell(cell: Cell, column: Column, bold: bool) -> str:
    if cell.missing:
        return MISSING
    text = number(cell.value, column.fmt)  # type: ignore[arg-type]
    if bold:
        text = f"**{text}**"
    if cell.lo is not None and cell.hi is not None:
        text += f" [{number(cell.lo, column.fmt)}, {number(cell.hi, column.fmt)}]"
    return text


def header(column: Column) -> str:
    label = f"{column.group}: {column.label}" if column.group else column.label
    return esc(label) + ARROWS[column.better]


def render_markdown(table: Table, level: int = 3) -> str:
    heads = [esc(h) for h in table.label_headers] + [header(c) for c in table.columns]
    lines = [
        f"{'#' * level} {esc(table.title)}",
        "",
        "| " + " | ".join(heads) + " |",
        "|" + "|".join([":---"] * len(table.label_headers) + ["---:"] * len(table.columns)) + "|",
    ]
    bold = {c.key: table.bold_rows(c) for c in table.columns}
    for i, row in enumerate(table.rows):
        cells = [esc(x) for x in row.labels] + [
            format_cell(table.cell(row, c), c, i in bold[c.key]) for c in table.columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {esc(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"
