"""Per-metric tolerances of ``bench regress``: ordered rules over metric-key patterns.

A tolerances file is ``{"rules": [rule, ...]}`` (other top-level keys, e.g. ``about``, are
comments). A rule is ``{"pattern": "gflops/*", "abs": 1e-6, "better": "either"}`` or
``{"pattern": "throughput_*", "ignore": true}``, optionally with a ``why``; the first rule
whose pattern (``fnmatch``, case-sensitive) matches a metric key decides. ``abs`` is the
allowed absolute change; ``better`` says which direction is an improvement (``higher``,
``lower``) or that any change beyond ``abs`` is a regression (``either``). A key no rule
matches must not change at all.

The file used is ``<baseline-dir>/tolerances.json`` when it exists, else the shipped
``benchmark/configs/regression/tolerances.json`` (quality metrics tight, FLOP and query
counts exact, time and memory ignored).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from benchmark.config import ConfigError, from_dict
from datamodules.safe_json import JsonReadError, loads_json, read_json

BETTER = ("higher", "lower", "either")
FILE = "tolerances.json"


@dataclass(frozen=True)
class Rule:
    pattern: str
    abs: float | None = None
    better: str = "either"
    ignore: bool = False
    why: str = ""

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("'pattern' must be a non-empty string")
        if self.ignore == (self.abs is not None):
            raise ValueError("a rule has either 'abs' (a number >= 0) or 'ignore': true")
        if self.abs is not None and self.abs < 0:
            raise ValueError(f"'abs' must be >= 0, got {self.abs}")
        if self.better not in BETTER:
            raise ValueError(f"'better' must be one of {BETTER}, got {self.better!r}")

    def describe(self) -> str:
        if self.ignore:
            return "ignored"
        arrow = {"higher": " (higher better)", "lower": " (lower better)", "either": ""}[self.better]
        return f"±{self.abs:g}{arrow}"


#: a key no rule matches may not change
EXACT = Rule("(no rule)", abs=0.0, better="either")


@dataclass(frozen=True)
class Tolerances:
    rules: tuple[Rule, ...]
    source: str

    def rule(self, key: str) -> Rule:
        return next((r for r in self.rules if fnmatch.fnmatchcase(key, r.pattern)), EXACT)


def shipped_path():
    return resources.files("benchmark") / "configs" / "regression" / FILE


def load_tolerances(path=None) -> Tolerances:
    """Read and validate a tolerances file (errors name the file, the rule and the field)."""
    path = shipped_path() if path is None else path
    try:
        if isinstance(path, (str, Path)):
            data = read_json(Path(path), what="tolerances file")
        else:  # the shipped file (a package resource)
            data = loads_json(path.read_bytes(), f"tolerances file {path}")
    except JsonReadError as e:
        raise ConfigError(str(e)) from None
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{path}: expected an object with a non-empty list 'rules'")
    parsed = []
    for i, r in enumerate(rules):
        if not isinstance(r, dict):
            raise ConfigError(f"{path}: rules[{i}] must be an object")
        parsed.append(from_dict(Rule, r, f"{path}: rules[{i}]"))
    return Tolerances(tuple(parsed), str(path))


def tolerances_for(baseline_dir: Path, explicit: Path | None = None) -> Tolerances:
    """``explicit``, else ``<baseline_dir>/tolerances.json``, else the shipped defaults."""
    if explicit is not None:
        return load_tolerances(explicit)
    local = Path(baseline_dir) / FILE
    return load_tolerances(local if local.is_file() else None)
