"""One safe JSON reader for every file the suite reads (configs, result files, baselines,
tolerances, annotations) and for JSON given on the command line (``--set`` values).

Python's ``json`` lets several inputs escape as tracebacks or worse: a non-UTF-8 file
(``UnicodeDecodeError``), a directory (``IsADirectoryError``), a FIFO (blocks for ever), a
structure nested 100k deep (``RecursionError``), an integer of 5,000 digits (the
``int_max_str_digits`` ``ValueError``), ``NaN``/``Infinity`` and overflowing floats such as
``1e999`` (silently non-finite). :func:`read_json` and :func:`loads_json` refuse each of
these with one :class:`JsonReadError` whose message names the source (file path or option)
and what was expected. The nesting bound is checked on the text *before* parsing, with
regular expressions (C speed, no recursion), so no parser or later recursive walk ever
sees a structure deeper than :data:`MAX_DEPTH`.

It lives in the data layer, the lowest package (``benchmark`` and ``lightning_modules`` import
``datamodules``, never the reverse), and imports nothing of the suite.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

#: deepest nesting of arrays/objects accepted; the suite's own files nest fewer than 10 levels
MAX_DEPTH = 200
#: largest file read (bytes); the largest result files of full-size runs are a few MB
MAX_BYTES = 1 << 30

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


class JsonReadError(ValueError):
    """JSON that cannot be read safely. ``syntax`` is True when the text is simply not JSON
    (as opposed to unreadable, too deep, too large or non-finite)."""

    def __init__(self, message: str, *, syntax: bool = False) -> None:
        super().__init__(message)
        self.syntax = syntax


def nesting_depth_exceeds(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether the arrays/objects of ``text`` nest deeper than ``max_depth`` (strings ignored).

    Each pass of the loop removes every empty ``[]``/``{}`` pair, i.e. one level from the
    bottom of every branch; a text still holding a pair after ``max_depth`` passes nests
    deeper. Unbalanced brackets (malformed text) stop the loop early and are left to the
    parser to report."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    run = re.compile(r"[\[{]" + f"{{{max_depth + 1}}}")  # more openers in a row than allowed: too deep at once
    for _ in range(max_depth):
        if not brackets:
            return False
        if run.search(brackets):
            return True
        brackets, removed = _EMPTY_PAIR.subn("", brackets)
        if not removed:
            return False  # unbalanced (malformed) and not too deep: a syntax error the parser names
    return bool(_EMPTY_PAIR.search(brackets) or run.search(brackets))


def _finite_float(source: str):
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise JsonReadError(f"{source}: the number {text[:40]} is out of the range of a finite float")
        return value

    return parse


def _constant(source: str):
    def parse(name: str):
        raise JsonReadError(f"{source}: {name} is not a number JSON allows (expected a finite number)")

    return parse


def loads_json(text: str | bytes, source: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` (bytes must be UTF-8), naming ``source`` in every error."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonReadError(
                f"{source}: not UTF-8 text (byte {e.start}: {e.reason}); expected a UTF-8 JSON file"
            ) from None
    if nesting_depth_exceeds(text, max_depth):
        raise JsonReadError(f"{source}: arrays/objects nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_float=_finite_float(source), parse_constant=_constant(source))
    except JsonReadError:
        raise
    except json.JSONDecodeError as e:
        raise JsonReadError(
            f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", syntax=True
        ) from None
    except RecursionError:  # the pre-check bounds nesting; kept for a parser that recurses deeper than expected
        raise JsonReadError(f"{source}: arrays/objects nested too deep") from None
    except ValueError as e:  # Python's int_max_str_digits limit: an integer of thousands of digits
        raise JsonReadError(f"{source}: a number too large to read ({str(e).split(';')[0]})") from None


def read_json(
    path: str | Path, *, what: str = "JSON file", max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES
) -> Any:
    """Read the JSON file ``path``; ``what`` says what the file is in error messages
    (e.g. "result file", "--config file"). Refuses an absent path, a directory or other
    non-regular file, a file over ``max_bytes``, non-UTF-8 bytes, nesting deeper than
    ``max_depth``, NaN/Infinity and numbers out of range."""
    path = Path(path)
    source = f"{what} {path}"
    try:
        if not path.exists():
            raise JsonReadError(f"{source}: not found")
        if path.is_dir():
            raise JsonReadError(f"{source}: is a directory, expected a JSON file")
        if not path.is_file():
            raise JsonReadError(f"{source}: not a regular file, expected a JSON file")
        size = path.stat().st_size
        if size > max_bytes:
            raise JsonReadError(f"{source}: {size} bytes, more than the {max_bytes} a JSON file may have")
        data = path.read_bytes()
    except OSError as e:
        raise JsonReadError(f"{source}: cannot be read ({e.strerror or e})") from None
    return loads_json(data, source, max_depth=max_depth)
