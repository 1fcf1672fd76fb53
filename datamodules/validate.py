"""Checked access to annotation records: every failure is one :class:`DataError` naming the
file, the record and the field.

The real datasets' readers (``coco.py``, ``medpix.py``, ``rsicap.py``) read their JSON
through these helpers only, so that any malformed input -- a wrong type, a missing key, an
empty caption, a file that is not JSON -- ends in the suite's own error with a message,
never in a ``KeyError`` or ``TypeError`` from deep inside a reader (the parsers are fuzzed
with hypothesis to keep it so). Optional keys that the real data omits are read with
``optional=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, overload

from datamodules.base import DataError
from datamodules.safe_json import JsonReadError, loads_json

_MISSING = object()


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def as_object(value: Any, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {_json_type(value)}")
    return value


def as_list(value: Any, path: Path, where: str) -> list:
    if not isinstance(value, list):
        raise DataError(f"{path}: {where}: expected a JSON list, got {_json_type(value)}")
    return value


def get(
    record: Mapping,
    key: str,
    kind: type | tuple[type, ...],
    path: Path,
    where: str,
    *,
    optional: bool = False,
    default: Any = None,
) -> Any:
    """``record[key]``, checked to be of ``kind`` (bool never counts as int). With
    ``optional=True`` an absent key or a ``null`` value gives ``default``."""
    value = record.get(key, _MISSING) if isinstance(record, Mapping) else _MISSING
    if value is _MISSING or (optional and value is None):
        if optional:
            return default
        raise DataError(f"{path}: {where}: missing field {key!r}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise DataError(f"{path}: {where}: field {key!r} must be {_type_name(kind)}, got {_json_type(value)}")
    return value


@overload
def text(record: Mapping, key: str, path: Path, where: str, *, optional: Literal[False] = False) -> str: ...


@overload
def text(record: Mapping, key: str, path: Path, where: str, *, optional: bool) -> str | None: ...


def text(record: Mapping, key: str, path: Path, where: str, *, optional: bool = False) -> str | None:
    """A non-empty string field, surrounding whitespace stripped (``None`` if optional and absent)."""
    value = get(record, key, str, path, where, optional=optional)
    if value is None:
        return None
    value = value.strip()
    if not value:
        if optional:
            return None
        raise DataError(f"{path}: {where}: field {key!r} is empty")
    return value


def identifier(record: Mapping, key: str, path: Path, where: str) -> str:
    """An id field: a non-empty string, or an integer (turned into its decimal string)."""
    value = get(record, key, (str, int), path, where)
    value = str(value).strip()
    if not value:
        raise DataError(f"{path}: {where}: field {key!r} is empty")
    return value


def read_jsonl(path: Path) -> list[Any]:
    """A JSON Lines file: one JSON value per non-blank line; errors name the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError(f"{path}: annotation file not found") from e
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(loads_json(line, f"{path}: line {number}"))
        except JsonReadError as e:
            raise DataError(str(e)) from None
    return out


def parse_options(cls: type, options: Mapping[str, Any] | None, dataset: str) -> Any:
    """Build a dataset's frozen options dataclass from ``DataConfig.options``: an unknown key,
    a wrong type or a bad value is a DataError naming ``data.options.<key>``."""
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in options.items():
        if key not in fields:
            raise DataError(
                f"unknown option 'data.options.{key}' for dataset {dataset!r}; valid options: "
                + (", ".join(fields) or "none")
            )
        default = fields[key].default
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            options[key], ok = float(value), True
        if not ok:
            raise DataError(
                f"data.options.{key} must be {_json_type(default).removeprefix('a ').removeprefix('an ')}, "
                f"got {value!r}"
            )
    try:
        return cls(**options)
    except ValueError as e:
        raise DataError(f"data.options ({dataset}): {e}") from None
