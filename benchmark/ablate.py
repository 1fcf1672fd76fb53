"""``bench ablate``: ablations as small override files on a model's base config.

An ablation is a folder ``benchmark/configs/ablations/<name>/`` holding

* ``_ablation.json``: ``{"model": ..., "description": ..., "arms": [arm, ...]}`` (table order; the
  first arm is the reference the others are compared with), optionally ``"default"`` (the arm that
  is the model's plain run; default: the first), ``"title"`` and ``"labels"`` (``{arm: text}``) for
  the report, which derives its ablations from these folders (``benchmark/reporting/ablation_arms.py``);
* ``<arm>.json`` per arm: run-config overrides (the format of ``--config`` files), applied on
  the model's shipped base config (``benchmark/configs/models/<model>.json``).

The registry is the folder: :func:`discover` (:mod:`benchmark.ablation_folders`, torch-free)
finds every ablation and checks that the arm files and the declared arms agree. Each arm runs
through the same runner as ``bench run`` (one result file per arm, tag ``<prefix>-<name>-<arm>``,
prefix ``ablate`` by default); the user's ``--config`` / ``--set`` overrides apply on top of the
arm. ``model_args`` that equal the model's defaults are dropped (:func:`canonical`), so an arm
that spells out a default (``{"qscaler": true}``) *is* the plain run of the model and shares its
cached checkpoint; :func:`check_default` refuses a ``default`` arm that is not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.ablation_folders import META, Ablation, Arm, ablations_root, discover, get  # noqa: F401 - re-exported
from benchmark.config import ConfigError, RunConfig, build_run_config, from_dict, model_defaults
from benchmark.preflight import check_run
from benchmark.registry import MODELS
from benchmark.results import load_result
from benchmark.runner import run
from benchmark.text_table import text_table

#: the ablation table's columns: (header, metric key of the result file)
COLUMNS = (
    ("Sim", "t2i/Sim"),
    ("R@5", "t2i/R@5"),
    ("MRR", "t2i/MRR"),
    ("Q-Len", "qlen/mean"),
    ("GFLOPs", "gflops/total"),
    ("Thr (img/s)", "throughput_img_s"),
)


def _defaults(config_cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def canonical(cfg: RunConfig) -> RunConfig:
    """``cfg`` without the ``model_args`` that equal the model config's defaults."""
    config_cls = MODELS.get(cfg.model).Config
    from_dict(config_cls, cfg.model_args, "model_args")  # validates every given field first
    defaults = _defaults(config_cls)
    kept = {
        k: v
        for k, v in cfg.model_args.items()
        if not (k in defaults and v == defaults[k] and type(v) is type(defaults[k]))
    }
    return dataclasses.replace(cfg, model_args=kept)


def arm_config(ablation: Ablation, arm: Arm, *overrides: dict) -> RunConfig:
    """The run config of one arm: base config, arm file, then ``overrides`` (later wins)."""
    cfg = build_run_config(model_defaults(ablation.model), arm.overrides, *overrides)
    if cfg.model != ablation.model:
        raise ConfigError(
            f"ablation {ablation.name!r} is defined on model {ablation.model!r}; the overrides make it {cfg.model!r}"
        )
    return canonical(cfg)


def check_default(ablation: Ablation) -> None:
    """Refuse an ablation whose ``default`` arm is not the model's plain run (the report counts a
    run that does not state the ablated field as that arm)."""
    plain = canonical(build_run_config(model_defaults(ablation.model))).model_args
    arm = ablation.default_arm
    own = arm_config(ablation, arm).model_args
    changed = sorted(k for k in set(own) | set(plain) if own.get(k) != plain.get(k))
    if changed:
        raise ConfigError(
            f"{ablation.meta_path}: 'default' names arm {arm.name!r}, but its overrides "
            f"change {changed} of the model's plain run; name the arm whose file states defaults only"
        )


@dataclass
class ArmResult:
    arm: Arm
    path: Path
    result: dict
    skipped: bool


def run_ablation(
    ablation: Ablation,
    overrides: Sequence[dict] = (),
    *,
    tag: str = "ablate",
    retrain: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
) -> list[ArmResult]:
    """Run every arm through :func:`benchmark.runner.run`; one result file per arm."""
    check_default(ablation)
    configs = [(arm, arm_config(ablation, arm, *overrides, {"tag": ablation.tag(arm, tag)})) for arm in ablation.arms]
    for _, cfg in configs:  # every arm's config is valid, on this machine, before the first one runs
        check_run(cfg)
    out = []
    for arm, cfg in configs:
        outcome = run(cfg, retrain=retrain, skip_existing=skip_existing, progress=progress)
        out.append(ArmResult(arm, outcome.path, outcome.result or load_result(outcome.path), outcome.skipped))
    return out


def ablation_table(ablation: Ablation, results: Sequence[ArmResult]) -> str:
    """The paper's ablation table (Sim, R@5, MRR, Q-Len, GFLOPs, throughput), one row per arm."""
    rows = [[r.arm.name, *(r.result["metrics"].get(key) for _, key in COLUMNS), r.path.name] for r in results]
    return text_table(["Arm", *(h for h, _ in COLUMNS), "Result file"], rows)
