"""Machine paths out of recorded files: absolute paths become ``<root>/relative`` or a hash.

A result file (and every other record the suite writes) must not carry the paths of the machine
that made it. ``portable`` rewrites every string that is an absolute path: under one of the named
roots (the cache, the data root, the results folder) it becomes ``<name>/path/inside``; elsewhere
``<external>/<file name>#<sha256 of the path, 12 hex>``, which still tells two paths apart.
``resolve`` maps a ``<name>/...`` string back onto the roots of the machine that reads it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXTERNAL = "<external>"


def _is_absolute_path(value: str) -> bool:
    return value.startswith("/") and "\n" not in value and not value.startswith("//")


def _normalised(roots: Mapping[str, str | os.PathLike[str] | None]) -> list[tuple[str, str]]:
    out = []
    for name, root in roots.items():
        if root is None or str(root) == "":
            continue
        out.append((name, os.path.normpath(os.path.abspath(os.fspath(root)))))
    # the most specific root first: the data folder inside the cache is "<data>", not "<cache>/data"
    return sorted(out, key=lambda item: len(item[1]), reverse=True)


def portable_path(value: str, roots: Mapping[str, str | os.PathLike[str] | None]) -> str:
    """One string: an absolute path rewritten as described in the module docstring; anything else
    unchanged."""
    if not _is_absolute_path(value):
        return value
    path = os.path.normpath(value)
    for name, root in _normalised(roots):
        if path == root:
            return f"<{name}>"
        if path.startswith(root.rstrip("/") + "/"):
            return f"<{name}>/{os.path.relpath(path, root)}"
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return f"{EXTERNAL}/{os.path.basename(path) or 'root'}#{digest}"


def portable(obj: Any, roots: Mapping[str, str | os.PathLike[str] | None]) -> Any:
    """``obj`` (JSON-like: dicts, lists, tuples, scalars) with every absolute-path string rewritten;
    keys are left as they are."""
    if isinstance(obj, str):
        return portable_path(obj, roots)
    if isinstance(obj, Mapping):
        return {k: portable(v, roots) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, roots) for v in obj]
    return obj


def resolve(value: str, roots: Mapping[str, str | os.PathLike[str] | None]) -> Path:
    """A recorded ``<name>/relative`` path on this machine's roots. Refuses an external path, an
    unknown root and a relative part that leaves its root."""
    if not value.startswith("<"):
        return Path(value)
    name, _, rest = value[1:].partition(">")
    root = roots.get(name)
    if name == EXTERNAL[1:-1] or root is None:
        raise ValueError(f"recorded path {value!r}: no root named <{name}> on this machine")
    base = Path(os.path.abspath(os.fspath(root)))
    target = Path(os.path.normpath(base / rest.lstrip("/")))
    if target != base and base not in target.parents:
        raise ValueError(f"recorded path {value!r} leaves its root <{name}>")
    return target
