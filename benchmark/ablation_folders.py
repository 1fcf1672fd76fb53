"""The ablation folders (``benchmark/configs/ablations/<name>/``): discovery and validation only.

The one source of the suite's ablations: ``bench ablate`` (:mod:`benchmark.ablate`) runs their
arms, ``bench reproduce`` plans them, and the report (:mod:`benchmark.reporting.ablation_arms`)
derives its tables from them. Reading the folders needs no torch, so the report stays light;
errors are :class:`~benchmark.config_error.ConfigError` naming the file and the field (its own
module: ``benchmark.config`` pulls in Lightning).

A folder holds ``_ablation.json`` (``model``, ``description``, ``arms`` in table order; optional
``default``, ``title``, ``labels``) and one override file per arm (the format of ``--config``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from benchmark.config_error import ConfigError
from datamodules.safe_json import JsonReadError, loads_json

META = "_ablation.json"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,24}$")


def _error(message: str) -> Exception:
    return ConfigError(message)


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: dict
    path: str


@dataclass(frozen=True)
class Ablation:
    name: str
    model: str
    description: str
    arms: tuple[Arm, ...]
    title: str = ""  # short heading for reports ("" = "<name>: <arm> / <arm>")
    default: str = ""  # the arm that is the model's plain run ("" = the first arm)
    labels: tuple[tuple[str, str], ...] = ()  # (arm, label for reports); unlisted arms: their name

    def tag(self, arm: Arm, prefix: str = "ablate") -> str:
        return f"{prefix}-{self.name}-{arm.name}"

    @property
    def heading(self) -> str:
        return self.title or f"{self.name}: {' / '.join(a.name for a in self.arms)}"

    @property
    def default_arm(self) -> Arm:
        return next((a for a in self.arms if a.name == self.default), self.arms[0])

    @property
    def meta_path(self) -> Path:
        return Path(self.arms[0].path).parent / META

    def label(self, arm: Arm) -> str:
        return dict(self.labels).get(arm.name, arm.name)


def ablations_root():
    return resources.files("benchmark") / "configs" / "ablations"


def _json_object(path, what: str) -> dict:
    try:
        data = loads_json(path.read_bytes(), str(path))
    except JsonReadError as e:
        raise _error(str(e)) from None
    if not isinstance(data, dict):
        raise _error(f"{path}: {what} must be a JSON object")
    return data


def _load(folder) -> Ablation:
    meta_path = folder / META
    if not meta_path.is_file():
        raise _error(f"{folder}: an ablation folder needs {META} (model, description, arms)")
    meta = _json_object(meta_path, "the ablation's description")
    for key, kind in (("model", str), ("description", str), ("arms", list)):
        if not isinstance(meta.get(key), kind):
            raise _error(f"{meta_path}: field '{key}' must be a {kind.__name__}")
    files = {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".json") and p.name != META}
    declared = meta["arms"]
    if sorted(declared) != sorted(files) or len(set(declared)) != len(declared):
        raise _error(
            f"{meta_path}: 'arms' {declared} must name the arm files of the folder exactly, found {sorted(files)}"
        )
    bad = [a for a in declared if not _NAME.match(a)]
    if bad or not declared:
        raise _error(f"{meta_path}: arm names must match {_NAME.pattern} (they become tags), got {bad or '[]'}")
    arms = tuple(Arm(a, _json_object(files[a], "an arm's overrides"), str(files[a])) for a in declared)
    title, default, labels = meta.get("title", ""), meta.get("default", declared[0]), meta.get("labels", {})
    if not isinstance(title, str):
        raise _error(f"{meta_path}: field 'title' must be a str")
    if default not in declared:
        raise _error(
            f"{meta_path}: 'default' must name the arm that is the model's plain run, one of "
            f"{declared}, got {default!r}"
        )
    if not isinstance(labels, dict) or any(k not in declared or not isinstance(v, str) for k, v in labels.items()):
        raise _error(f"{meta_path}: 'labels' must map arm names {declared} to strings, got {labels!r}")
    return Ablation(folder.name, meta["model"], meta["description"], arms, title, default, tuple(labels.items()))


def folders(root=None) -> list:
    """The ablation folders under ``root`` (default: the shipped ``benchmark/configs/ablations``), by name."""
    root = ablations_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    return [f for f in sorted(root.iterdir(), key=lambda f: f.name) if f.is_dir() and not f.name.startswith((".", "_"))]


def load(folder) -> Ablation:
    """One ablation folder, validated (a ``ConfigError`` names the file and the field)."""
    return _load(folder)


def discover(root=None) -> dict[str, Ablation]:
    """Every ablation under ``root`` (default: the shipped ``benchmark/configs/ablations``), by name."""
    return {f.name: _load(f) for f in folders(root)}


def get(name: str, root=None) -> Ablation:
    found = discover(root)
    if name not in found:
        raise _error(f"unknown ablation {name!r}; valid ablations: {', '.join(found) or '(none)'}")
    return found[name]
