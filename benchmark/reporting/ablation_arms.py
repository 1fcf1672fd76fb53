"""The ablations a report knows, and which arm each run belongs to, read from its stored config.

The ablations are not listed here: they are derived from ``bench ablate``'s folders
(``benchmark/configs/ablations/<name>/``, read by :mod:`benchmark.ablation_folders`), the one
source of every ablation, so a new folder appears in the report by itself. For the report an
ablation is one ``model_args`` field of one model with named arms, in the folder's table order
(the first arm is the reference the others are compared with): every arm file must be
``{"model_args": {FIELD: value}}`` with the same FIELD and distinct JSON scalars. The folder's
``default`` arm gives the model's default value (the value of a run that does not state the
field), its ``title`` and ``labels`` the headings. A folder that is no such single-field
ablation, or a malformed one, is left out of the report with a note (:func:`unsupported_ablations`).

A run's arm comes from its stored config, never from its file name or tag: the resolved
``model_config`` if the file has it, else ``config.model_args``, else the field's default.
Runs are compared only within a *group*: runs of the same model on the same data whose
configs are equal except for the ablated field (and the tag, the output folders and the
data folder), so every other switch, the training and the seed are held fixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from benchmark import ablation_folders
from benchmark.config import data_identity
from benchmark.reporting.per_query import result_name

_VOLATILE_CONFIG = ("tag", "results_dir", "cache_dir")


class UnsupportedAblation(ValueError):
    """An ablation folder the report cannot tabulate; the message names the file and why."""


@dataclass(frozen=True)
class Arm:
    value: Any
    label: str
    name: str = ""  # the arm file's name (``with``, ``frozen``)

    @property
    def key(self) -> str:
        """The arm as a JSON scalar (``"true"``, ``"false"``, ``"nested"``): the paper table's row key."""
        return self.value if isinstance(self.value, str) else json.dumps(self.value)


@dataclass(frozen=True)
class Ablation:
    name: str
    title: str
    model: str
    field: str
    default: Any
    arms: tuple[Arm, ...]

    def value_of(self, result: dict) -> Any:
        return setting(result, self.field, self.default)

    def arm_of(self, result: dict) -> Arm | None:
        """The arm of ``result`` (None for another model or a value that is no arm)."""
        if result.get("model") != self.model:
            return None
        value = self.value_of(result)
        return next((a for a in self.arms if a.value == value and type(a.value) is type(value)), None)

    @property
    def default_arm(self) -> Arm:
        return next(a for a in self.arms if a.value == self.default)


def from_folder(spec: ablation_folders.Ablation) -> Ablation:
    """The report's view of one ablation folder; :class:`UnsupportedAblation` if it is not one
    ``model_args`` field with a scalar value per arm."""
    values: dict[str, Any] = {}
    fields: set[str] = set()
    for arm in spec.arms:
        args = arm.overrides.get("model_args")
        if set(arm.overrides) != {"model_args"} or not isinstance(args, dict) or len(args) != 1:
            raise UnsupportedAblation(
                f"{arm.path}: the report tabulates arms that set exactly one model_args "
                f"field (e.g. {{'model_args': {{'qscaler': false}}}}), got {arm.overrides}"
            )
        ((name, value),) = args.items()
        if not isinstance(value, (bool, int, float, str)):
            raise UnsupportedAblation(
                f"{arm.path}: model_args.{name} must be a JSON scalar for the report, got {value!r}"
            )
        fields.add(name)
        values[arm.name] = value
    keys = [Arm(v, "").key for v in values.values()]
    if len(fields) != 1 or len(set(keys)) != len(keys):
        raise UnsupportedAblation(
            f"{spec.meta_path}: the arms must set one and the same model_args field to distinct values, got {values}"
        )
    arms = tuple(Arm(values[a.name], spec.label(a), a.name) for a in spec.arms)
    return Ablation(spec.name, spec.heading, spec.model, fields.pop(), values[spec.default_arm.name], arms)


@lru_cache(maxsize=8)
def _derived(root: str | None) -> tuple[tuple[Ablation, ...], tuple[tuple[str, str], ...]]:
    found, skipped = [], []
    for folder in ablation_folders.folders(root):
        try:
            found.append(from_folder(ablation_folders.load(folder)))
        except ValueError as e:  # UnsupportedAblation, or the folder's ConfigError: a note, not a failed report
            skipped.append((folder.name, str(e)))
    return tuple(found), tuple(skipped)


def report_ablations(root=None) -> dict[str, Ablation]:
    """Every tabulable ablation of the folders under ``root`` (default: the shipped ones), by name."""
    return {a.name: a for a in _derived(None if root is None else str(root))[0]}


def unsupported_ablations(root=None) -> dict[str, str]:
    """Ablation folders the report leaves out: name -> why."""
    return dict(_derived(None if root is None else str(root))[1])


def setting(result: dict, name: str, default: Any) -> Any:
    """A ``model_args`` field as the run used it: resolved ``model_config``, else the overrides."""
    for holder in (result.get("model_config"), (result.get("config") or {}).get("model_args")):
        if isinstance(holder, dict) and name in holder:
            return holder[name]
    return default


def is_ablation_variant(result: dict) -> bool:
    """True for a run that is a non-default arm of some ablation (it belongs in the ablation
    tables, not in the model comparison)."""
    for ablation in report_ablations().values():
        if result.get("model") == ablation.model and ablation.value_of(result) != ablation.default:
            return True
    return False


def _without_cache(value: Any, cache_dir: str | None) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache(v, cache_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_cache(v, cache_dir) for v in value]
    if isinstance(value, str) and cache_dir and value.startswith(cache_dir):
        return "<cache>" + value[len(cache_dir) :]
    return value


def comparable_key(result: dict, ablated: str) -> str:
    """A hash of everything that must be equal for two runs to be arms of one group."""
    config = dict(result.get("config") or {})
    cache_dir = config.get("cache_dir")
    for k in _VOLATILE_CONFIG:
        config.pop(k, None)
    if isinstance(config.get("data"), dict):
        config["data"] = data_identity(config["data"])
    model_config = result.get("model_config")
    if isinstance(model_config, dict):
        config.pop("model_args", None)  # the resolved model_config decides
        model_config = {k: v for k, v in model_config.items() if k != ablated}
    elif isinstance(config.get("model_args"), dict):
        config["model_args"] = {k: v for k, v in config["model_args"].items() if k != ablated}
    prov = result.get("provenance") or {}
    payload = {
        "model": result.get("model"),
        "dataset": result.get("dataset"),
        "size": result.get("size"),
        "seed": result.get("seed"),
        "config": config,
        "model_config": model_config,
        "data": [prov.get("split"), prov.get("annotations_sha256")],
    }
    text = json.dumps(_without_cache(payload, cache_dir), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ArmGroup:
    """Runs of one ablation that differ only in the ablated field: arm key -> run."""

    ablation: Ablation
    dataset: str
    size: str
    runs: dict[str, dict] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)  # files of an arm already taken

    @property
    def complete(self) -> bool:
        return len(self.runs) >= 2

    def context(self) -> str:
        """The other ablations' settings of this group, e.g. ``freeze_qformer=false, attention=nested``."""
        run = next(iter(self.runs.values()))
        others = [
            a for a in report_ablations().values() if a.name != self.ablation.name and a.model == self.ablation.model
        ]
        return ", ".join(f"{a.field}={json.dumps(a.value_of(run))}" for a in others)


def arm_groups(results: list[dict], ablation: Ablation) -> list[ArmGroup]:
    """Groups of ``ablation`` over ``results`` (files in name order; the first file of an arm
    in a group is used, later ones are listed as duplicates)."""
    groups: dict[str, ArmGroup] = {}
    for r in sorted(results, key=result_name):
        arm = ablation.arm_of(r)
        if arm is None:
            continue
        key = comparable_key(r, ablation.field)
        g = groups.setdefault(key, ArmGroup(ablation, str(r.get("dataset")), str(r.get("size"))))
        if arm.key in g.runs:
            g.duplicates.append(result_name(r))
        else:
            g.runs[arm.key] = r
    return sorted(groups.values(), key=lambda g: (g.dataset, g.size, result_name(next(iter(g.runs.values())))))
