"""The ``folder`` dataset's annotation file, JSONL or CSV, read into checked rows.

One row per caption; columns (JSONL: keys of one JSON object per line; CSV: a header line,
then one record per line, comma-separated, RFC 4180 quoting, UTF-8 with or without a BOM):

=============  ========  ==============================================================
column         required  meaning
=============  ========  ==============================================================
``image``      yes       the image's path relative to the data root, with ``/``
``caption``    yes       a caption of that image (non-empty)
``split``      no        ``train``, ``val`` or ``test``; empty or absent: the hash split
``instruction`` no       the query text for this caption, used as is instead of a template
``group``      no        a group id (string; JSONL also an integer): the captions and images
                         of one group are relevant to each other
=============  ========  ==============================================================

Several rows may name the same image (several captions). Other columns are ignored (and
listed by ``bench data check``). Every problem is reported with the file, the line and the
field -- a missing column, an empty caption, a bad split value, a path that leaves the data
root, a line that is not JSON or has the wrong number of CSV fields, text that is not UTF-8
-- all problems of the file at once (the first :data:`MAX_LISTED`), in one
:class:`~datamodules.base.DataError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.base import DataError

REQUIRED = ("image", "caption")
OPTIONAL = ("split", "instruction", "group")
COLUMNS = REQUIRED + OPTIONAL
SPLIT_VALUES = ("train", "val", "test")
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
#: problems listed in one error (the total is always given)
MAX_LISTED = 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def relative_inside_root(value: str) -> str:
    """``value`` as a normalized relative POSIX path (``./`` parts dropped) if it stays inside
    the folder it is relative to; ValueError saying why not (absolute, ``..``, ``\\``, NUL).

    A lexical check: symbolic links inside the root are followed when the file is opened (a
    folder of links into a shared image store works). One small function, meant to be
    replaced by the suite's shared path check."""
    if "\x00" in value:
        raise ValueError("it holds a NUL character")
    if "\\" in value:
        raise ValueError("it holds '\\' (write paths with '/')")
    if value.startswith("/") or _DRIVE.match(value):
        raise ValueError("it is absolute (expected a path relative to the data root)")
    parts = [p for p in value.split("/") if p and p != "."]  # as PurePosixPath(value).parts, without its cost
    if ".." in parts:
        raise ValueError("it leaves the data root ('..')")
    if not parts:
        raise ValueError("it names no file")
    return "/".join(parts)


@dataclass(frozen=True)
class Row:
    """One checked annotation row (a caption of an image)."""

    line: int  # 1-based line of the file where the row starts
    image: str  # normalized path relative to the data root
    caption: str
    split: str | None = None  # None: the hash split decides
    instruction: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Annotations:
    path: Path
    format: str  # "jsonl" or "csv"
    rows: tuple[Row, ...]
    columns: tuple[str, ...]  # the known columns the file uses
    ignored: tuple[str, ...]  # other columns, ignored
    sha256: str  # of the file's bytes


class Problems:
    """Problems found in one file, raised together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"line {line}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            raise DataError(f"{self.path}: {self.items[0]}")
        shown = self.items[:MAX_LISTED]
        more = f"\n  ... and {len(self.items) - len(shown)} more" if len(self.items) > len(shown) else ""
        raise DataError(f"{self.path}: {len(self.items)} problems:\n  " + "\n  ".join(shown) + more)


def _value(raw: dict, key: str, line: int, problems: Problems, *, integer_ok: bool = False) -> str | None:
    """A field as stripped text; None when absent, null or empty. A wrong JSON type is a problem."""
    value = raw.get(key)
    if value is None:
        return None
    if integer_ok and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        kind = "a string or an integer" if integer_ok else "a string"
        problems.add(line, f"field {key!r} must be {kind}, got {type(value).__name__} {value!r}")
        return None
    return value.strip() or None


def _row(raw: dict, line: int, problems: Problems) -> Row | None:
    """One row from a dict of its fields; None (problems recorded) when it is not usable."""
    before = len(problems.items)
    fields: dict[str, Any] = {}
    for key in COLUMNS:
        present, n = key in raw and raw[key] is not None, len(problems.items)
        fields[key] = _value(raw, key, line, problems, integer_ok=key == "group")
        if key in REQUIRED and fields[key] is None and len(problems.items) == n:
            problems.add(line, f"field {key!r} is empty" if present else f"missing field {key!r}")
    image = fields["image"]
    if image is not None:
        try:
            image = relative_inside_root(image)
        except ValueError as e:
            problems.add(line, f"field 'image' must be a path inside the data root, got {fields['image']!r}: {e}")
    split = fields["split"]
    if split is not None and split not in SPLIT_VALUES:
        problems.add(
            line, f"field 'split' is {split!r}, expected one of {', '.join(SPLIT_VALUES)} (or empty for the hash split)"
        )
    if len(problems.items) > before:
        return None
    return Row(line, image, fields["caption"], split, fields["instruction"], fields["group"])


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_jsonl(text: str, path: Path, problems: Problems) -> tuple[list[Row], set[str], set[str]]:
    rows: list[Row] = []
    seen: set[str] = set()
    ignored: set[str] = set()
    # split on "\n" only: str.splitlines would also split on U+2028, which JSON strings may hold
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add(number, f"not valid JSON ({e.msg}, column {e.colno})")
            continue
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits
            problems.add(number, f"not readable as JSON ({type(e).__name__}: {str(e)[:80]})")
            continue
        if not isinstance(raw, dict):
            problems.add(number, f"expected a JSON object with fields {', '.join(REQUIRED)}, got {type(raw).__name__}")
            continue
        seen.update(k for k in raw if k in COLUMNS)
        ignored.update(k for k in raw if k not in COLUMNS)
        row = _row(raw, number, problems)
        if row is not None:
            rows.append(row)
    return rows, seen, ignored


def _read_csv(text: str, path: Path, problems: Problems) -> tuple[list[Row], set[str], set[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[Row] = []
    end = 0  # the line the previous record ended on
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.add(end + 1, f"not readable as CSV ({e})")
            problems.raise_if_any()  # the reader cannot go on past a broken record
        start, end = end + 1, reader.line_num
        if not record or all(not f.strip() for f in record):
            continue
        if header is None:
            header = [h.strip() for h in record]
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise DataError(f"{path}: line {start} (header): column {duplicates[0]!r} appears more than once")
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(
                    f"{path}: line {start} (header): missing column {missing[0]!r} "
                    f"(the header has: {', '.join(header) or 'nothing'}; required: {', '.join(REQUIRED)}; "
                    f"optional: {', '.join(OPTIONAL)})"
                )
            continue
        if len(record) != len(header):
            problems.add(start, f"{len(record)} fields, but the header (line 1) has {len(header)} columns")
            continue
        row = _row(dict(zip(header, record, strict=True)), start, problems)
        if row is not None:
            rows.append(row)
    if header is None:
        raise DataError(f"{path}: empty CSV file (expected a header line with the columns {', '.join(REQUIRED)})")
    return rows, {h for h in header if h in COLUMNS}, {h for h in header if h not in COLUMNS and h}


def read_annotations(path: Path) -> Annotations:
    """Read and check a ``.jsonl`` or ``.csv`` annotation file (see the module docstring)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: annotation files end in {' or '.join(FORMATS)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    text = _decode(data, path)
    problems = Problems(path)
    rows, columns, ignored = (_read_jsonl if fmt == "jsonl" else _read_csv)(text, path, problems)
    problems.raise_if_any()
    if not rows:
        raise DataError(
            f"{path}: no annotation rows (expected one row per caption with the fields {', '.join(REQUIRED)})"
        )
    return Annotations(
        path,
        fmt,
        tuple(rows),
        tuple(c for c in COLUMNS if c in columns),
        tuple(sorted(ignored)),
        hashlib.sha256(data).hexdigest(),
    )
