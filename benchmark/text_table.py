"""Plain-text tables for the terminal (``bench ablate``, ``bench regress``): aligned columns.

Numbers are right-aligned, text left-aligned; ``None`` and NaN print as ``-``. Cells are
printed as given (terminal output, not Markdown or LaTeX: the report builders escape).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(value: object, digits: int = 4) -> str:
    """A number: ``digits`` decimals from 1 up, ``digits`` significant digits below (``-`` for None
    or NaN); anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.{digits}g}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """``header`` and ``rows`` as aligned columns separated by two spaces, a rule under the header."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False for i in range(len(header))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(header)), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])
