"""Instruction templates read from a file (``data.templates`` given as a path instead of a list).

Two formats, told apart by the file's extension:

* ``.json``: a JSON list of strings, or an object ``{"templates": [...]}``;
* anything else (``.txt``): one template per line; blank lines and lines whose first
  non-blank character is ``#`` are skipped; surrounding spaces are stripped.

Every template must contain ``{caption}`` (filled with the caption) and may use only plain
``{field}`` names (the fields its dataset offers are checked when the DataModule is built).
A relative path is read relative to the current working directory, like ``--config`` and
``--data-root``. The file is read once, when the run config is built: the config (and so the
result file, its hash and the cached checkpoint's key) holds the templates themselves, never
the path, so editing the file makes a new configuration. Errors name the file and the line
(text) or the list index (JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

from datamodules.base import DataError, InstructionTemplates

#: a templates file larger than this is refused (a wrong file, not templates)
MAX_BYTES = 1 << 20
#: at most this many templates, each at most MAX_LENGTH characters
MAX_TEMPLATES = 10_000
MAX_LENGTH = 2_000


def _check(template: str, path: Path, where: str) -> str:
    if len(template) > MAX_LENGTH:
        raise DataError(f"{path}: {where}: template is {len(template)} characters long, at most {MAX_LENGTH} allowed")
    try:
        InstructionTemplates((template,))
    except ValueError as e:
        raise DataError(f"{path}: {where}: {e}") from None
    return template


def _from_json(data: str, path: Path) -> list[str]:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"{path}: not readable as JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if isinstance(doc, dict) and set(doc) == {"templates"}:
        doc = doc["templates"]
    if not isinstance(doc, list):
        raise DataError(f'{path}: expected a JSON list of template strings or {{"templates": [...]}}')
    out = []
    for i, value in enumerate(doc):
        if not isinstance(value, str):
            raise DataError(f"{path}: templates[{i}]: expected a string, got {type(value).__name__}")
        out.append(_check(value.strip(), path, f"templates[{i}]"))
    return out


def _from_text(data: str, path: Path) -> list[str]:
    out = []
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(_check(line, path, f"line {number}"))
    return out


def read_templates(path: Path | str) -> tuple[str, ...]:
    """The templates of a ``.json`` or text file (see the module docstring); a :class:`DataError`
    naming the file and the line or index otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path}: templates file is larger than {MAX_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path}: templates file not found (data.templates names a file, relative to the "
            "current directory, or a list of templates)"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the templates file ({type(e).__name__}: {e})") from None
    try:
        data = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from None
    templates = _from_json(data, path) if path.suffix.lower() == ".json" else _from_text(data, path)
    if not templates:
        raise DataError(f"{path}: the templates file holds no template")
    if len(templates) > MAX_TEMPLATES:
        raise DataError(f"{path}: {len(templates)} templates, at most {MAX_TEMPLATES} allowed")
    return tuple(templates)
