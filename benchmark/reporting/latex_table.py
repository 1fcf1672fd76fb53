"""Render a :class:`~benchmark.reporting.table_model.Table` as a LaTeX booktabs table.

``\\toprule`` / ``\\midrule`` / ``\\bottomrule`` (needs ``\\usepackage{booktabs}``); column
groups (the suite's numbers, the paper's reference columns) get a ``\\multicolumn`` header
with a ``\\cmidrule`` under it; bold per the table's bold rule (``\\textbf``); intervals in
small type after the value; ``--`` where a value is missing; every piece of text escaped.
"""

from __future__ import annotations

from itertools import groupby

from benchmark.reporting.escape import latex as esc
from benchmark.reporting.estimates import HIGHER, LOWER, Cell
from benchmark.reporting.markdown_table import number
from benchmark.reporting.table_model import Column, Table

MISSING = "--"
OURS_GROUP = "this suite"
ARROWS = {HIGHER: r" $\uparrow$", LOWER: r" $\downarrow$", None: ""}


def format_cell(cell: Cell, column: Column, bold: bool) -> str:
    if cell.missing:
        return MISSING
    text = number(cell.value, column.fmt)  # type: ignore[arg-type]
    if bold:
        text = rf"\textbf{{{text}}}"
    if cell.lo is not None and cell.hi is not None:
        lo, hi = number(cell.lo, column.fmt), number(cell.hi, column.fmt)
        text += rf" {{\scriptsize [{lo}, {hi}]}}"
    return text


def _group_header(table: Table) -> list[str]:
    if not any(c.group for c in table.columns):
        return []
    first = len(table.label_headers) + 1
    cells, rules = [""] * len(table.label_headers), []
    for group, members in groupby(table.columns, key=lambda c: c.group):
        width = len(list(members))
        cells.append(rf"\multicolumn{{{width}}}{{c}}{{{esc(group or OURS_GROUP)}}}")
        rules.append(rf"\cmidrule(lr){{{first}-{first + width - 1}}}")
        first += width
    return [" & ".join(cells) + r" \\", " ".join(rules)]


def render_latex(table: Table) -> str:
    spec = "l" * len(table.label_headers) + "r" * len(table.columns)
    title = esc(table.title)
    caption = " ".join([title + ("" if table.title.endswith(".") else "."), *(esc(n) for n in table.notes)])
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption[{{{title}}}]{{{caption}}}",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *_group_header(table),
    ]
    heads = [esc(h) for h in table.label_headers] + [esc(c.label) + ARROWS[c.better] for c in table.columns]
    lines += [" & ".join(heads) + r" \\", r"\midrule"]
    bold = {c.key: table.bold_rows(c) for c in table.columns}
    for i, row in enumerate(table.rows):
        cells = [esc(x) for x in row.labels] + [
            format_cell(table.cell(row, c), c, i in bold[c.key]) for c in table.columns
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
