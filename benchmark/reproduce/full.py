"""The plan of ``bench reproduce --size full --data-root DIR``: the paper's rows at full size.

1. One step per (dataset found under DIR, registered model), tag ``default``: the model's
   full-size recipe (``benchmark/configs/models/full/<model>.json``, :func:`model_defaults` at
   size "full") started from its pretrained checkpoint (:data:`benchmark.store.CHECKPOINT_FAMILIES`: a BLIP-2
   model from ``--pretrained-blip2``, CLIP from ``--pretrained-clip``; loaded from local files
   or the Hugging Face cache only), on the dataset's folder.
2. One step per arm of every ablation folder (:func:`benchmark.ablation_folders.discover`) on
   :data:`ABLATION_DATASET` (the paper's ablation rows match its COCO row), tag
   ``ablate-<ablation>-<arm>``, on the full recipe of the ablation's model; an arm whose config
   equals an earlier step's is shared with it (as in the tiny plan).
3. The report.

A dataset absent from DIR, or whose folder is unusable, is skipped with the reason
(:mod:`benchmark.reproduce.datasets`). Each run step carries its :class:`StepDetail` (epochs,
split sizes, GPU-hour estimate from :mod:`benchmark.reproduce.estimate`) for ``--dry-run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.ablate import canonical
from benchmark.ablation_folders import discover
from benchmark.config import ConfigError, RunConfig, build_run_config, deep_merge, from_dict, model_defaults
from benchmark.preflight import check_pretrained
from benchmark.registry import MODELS, Registry, UnknownNameError
from benchmark.reporting.options import ReportOptions
from benchmark.reproduce.datasets import FoundDataset, SplitSizes, find_datasets
from benchmark.reproduce.estimate import CostTable, Estimate, estimate
from benchmark.reproduce.plan import MODEL_TAG, REPORT, Plan, load_error, refuse_fixed, select, share
from benchmark.reproduce.steps import BrokenStep, ReportStep, RunSettings, RunStep, SkippedStep, Step
from benchmark.store import CHECKPOINT_FAMILIES, checkpoint_family

SIZE = "full"
ABLATION_DATASET = "coco"
#: checkpoint family -> its default hub id (the run loads it from local files / the HF cache only)
DEFAULT_CHECKPOINTS = {"blip2": "Salesforce/blip2-itm-vit-g", "clip": "openai/clip-vit-large-patch14"}


@dataclass(frozen=True)
class StepDetail:
    model: str
    dataset: str
    arm: str  # "-" for a model's own row
    epochs: int
    sizes: SplitSizes
    estimate: Estimate | None  # None: no measured throughput of this model
    lr: float
    batch_size: int  # per process
    processes: int  # train.devices x train.num_nodes


@dataclass(frozen=True)
class FullRunStep(RunStep):
    detail: StepDetail | None = None


@dataclass(frozen=True)
class FullPlan(Plan):
    datasets: tuple[FoundDataset, ...] = ()
    costs: CostTable | None = None


def _k_test(cls: Any, cfg: RunConfig) -> int | None:
    model_config = from_dict(cls.Config, cfg.model_args, "model_args")
    return getattr(model_config, "k", None)


def _detail(cfg: RunConfig, cls: Any, arm: str, sizes: SplitSizes, costs: CostTable | None) -> StepDetail:
    cost = costs.models.get(cfg.model) if costs else None
    est = (
        None
        if cost is None
        else estimate(
            cost,
            epochs=cfg.train.max_epochs,
            train_images=sizes.train_images,
            test_images=sizes.test_images,
            queries=sizes.test_queries,
            k_test=_k_test(cls, cfg),
        )
    )
    return StepDetail(
        cfg.model,
        cfg.dataset,
        arm,
        cfg.train.max_epochs,
        sizes,
        est,
        cfg.train.optim.lr,
        cfg.data.batch_size,
        cfg.train.devices * cfg.train.num_nodes,
    )


def _run_step(
    title: str,
    selectors: tuple[str, ...],
    model: str,
    base: dict,
    arm_name: str,
    overrides: Sequence[dict],
    own: dict,
    found: FoundDataset,
    models: Registry,
    costs: CostTable | None,
) -> Step:
    cls = models.get(model)
    try:
        cfg = build_run_config(base, *overrides, own)
        if cfg.model != model:
            raise ConfigError(f"the overrides make it model {cfg.model!r}")
        from_dict(cls.Config, cfg.model_args, "model_args")
        cfg = canonical(cfg)
    except ConfigError as e:
        return BrokenStep(title, selectors, f"no valid {SIZE} run: {e}")
    assert found.sizes is not None
    return FullRunStep(title, selectors, cfg, _detail(cfg, cls, arm_name, found.sizes, costs))


def build_full_plan(
    data_root: Path,
    overrides: Sequence[dict] = (),
    *,
    pretrained: dict[str, str] | None = None,
    results_dir: Path = Path("results"),
    out_dir: Path = Path("reports"),
    cache_dir: Path | None = None,
    only: Iterable[str] = (),
    model_names: Iterable[str] = (),
    report: ReportOptions | None = None,
    costs: CostTable | None = None,
    models: Registry = MODELS,
    ablations_root=None,
) -> FullPlan:
    """Every (dataset under ``data_root``, model) row, every ablation arm on COCO, the report."""
    if not Path(data_root).is_dir():
        raise ConfigError(f"--data-root: {data_root} does not exist or is not a folder")
    refuse_fixed(overrides)
    wanted = [n.strip() for item in model_names for n in item.split(",") if n.strip()]
    for name in wanted:
        if name not in models:
            raise UnknownNameError("model", name, models.names())
    checkpoints = {**DEFAULT_CHECKPOINTS, **(pretrained or {})}
    user_data: dict = {}
    for o in overrides:
        user_data = {**user_data, **o.get("data", {})}
    datasets = find_datasets(Path(data_root), user_data)
    fixed: dict = {"size": SIZE, "results_dir": str(results_dir)}
    if cache_dir is not None:
        fixed["cache_dir"] = str(cache_dir)
    steps: list[Step] = []
    selectors: tuple[str, ...]
    family: dict[str, str | None] = {}
    for name in wanted or models.names():
        family[name] = None if load_error(models, name) else checkpoint_family(models.get(name).Config)
    for found in datasets:
        for name in family:
            title, selectors = f"{name} on {found.name}", (name, found.name, f"{name}:{found.name}")
            if not found.usable:
                steps.append(SkippedStep(title, selectors, f"dataset {found.name}: {found.problem}"))
                continue
            error, fam = load_error(models, name), family[name]
            if error or fam is None:
                steps.append(
                    BrokenStep(
                        title,
                        selectors,
                        error
                        or f"{name}: no pretrained checkpoint family known "
                        f"(its config class is none of {sorted(CHECKPOINT_FAMILIES)})",
                    )
                )
                continue
            own = {
                "model": name,
                "dataset": found.name,
                "tag": MODEL_TAG,
                **fixed,
                "data": {"root": str(found.folder)},
                "model_args": {"pretrained": checkpoints[fam]},
            }
            steps.append(
                _run_step(title, selectors, name, model_defaults(name, SIZE), "-", overrides, own, found, models, costs)
            )
    ablation_data = next((d for d in datasets if d.name == ABLATION_DATASET), None)
    for ablation in discover(ablations_root).values():
        for arm in ablation.arms:
            title = f"{ablation.model} on {ABLATION_DATASET} (ablation {ablation.name}: {arm.name})"
            selectors = (ablation.name, f"{ablation.name}:{arm.name}")
            if ablation.model not in models or load_error(models, ablation.model):
                steps.append(
                    SkippedStep(
                        title,
                        selectors,
                        f"ablation {ablation.name} is on {ablation.model!r}, "
                        "which is not a registered, importable model",
                    )
                )
                continue
            if wanted and ablation.model not in wanted:
                steps.append(SkippedStep(title, selectors, f"--models leaves out {ablation.model}"))
                continue
            if ablation_data is None or not ablation_data.usable:
                why = ablation_data.problem if ablation_data else "not a registered dataset"
                steps.append(SkippedStep(title, selectors, f"the ablations run on {ABLATION_DATASET}: {why}"))
                continue
            fam = checkpoint_family(models.get(ablation.model).Config)
            if fam is None:
                steps.append(BrokenStep(title, selectors, f"{ablation.model}: no pretrained checkpoint family known"))
                continue
            own = {
                "dataset": ABLATION_DATASET,
                "tag": ablation.tag(arm),
                **fixed,
                "data": {"root": str(ablation_data.folder)},
                "model_args": {"pretrained": checkpoints[fam]},
            }
            base = deep_merge(model_defaults(ablation.model, SIZE), arm.overrides)
            steps.append(
                _run_step(
                    title, selectors, ablation.model, base, arm.name, overrides, own, ablation_data, models, costs
                )
            )
    steps.append(ReportStep(REPORT, (REPORT,), Path(results_dir), Path(out_dir), report or ReportOptions()))
    return FullPlan(tuple(share(select(steps, only))), datasets=tuple(datasets), costs=costs)


def describe_full(plan: FullPlan, settings: RunSettings) -> list[str]:
    """The ``--dry-run`` lines: datasets, one line per step, totals, assumptions."""
    lines = []
    for d in plan.datasets:
        if d.usable:
            s = d.sizes
            assert s is not None  # usable: it has sizes
            lines.append(
                f"dataset {d.name}: {d.folder} (train {s.train_images} images; test {s.test_images} images, "
                f"{s.test_queries} queries)"
            )
        else:
            lines.append(f"dataset {d.name}: skipped ({d.problem})")
    total = 0.0
    unknown = 0
    for i, step in enumerate(plan.steps, 1):
        detail = getattr(step, "detail", None)
        status = step.preview(settings)
        if detail is None:
            lines.append(f"[{i}] {step.title}: {status}")
            continue
        s = detail.sizes
        head = (
            f"[{i}] model {detail.model} | dataset {detail.dataset} | arm {detail.arm} | epochs {detail.epochs} | "
            f"lr {detail.lr:g} | batch {detail.batch_size * detail.processes} ({detail.processes} x "
            f"{detail.batch_size}) | train {s.train_images} img | "
            f"test {s.test_images} img, {s.test_queries} queries"
        )
        if detail.estimate is None:
            unknown += 1
            lines.append(f"{head} | estimate: none (no measured throughput of {detail.model})")
        else:
            e = detail.estimate
            total += e.total_h
            lines.append(f"{head} | est. {e.train_h:.3g} train + {e.eval_h:.3g} eval = {e.total_h:.3g} GPU-h")
        if status != "run":
            lines.append(f"    {status}")
    lines.append(
        f"total: est. {total:.3g} GPU-h (estimates, not measurements)"
        + (f" ({unknown} step(s) without an estimate)" if unknown else "")
    )
    lines += checkpoint_problems(plan)
    if plan.costs is not None:
        lines += [f"assumption: {a}" for a in plan.costs.assumptions()]
    else:
        lines.append("assumption: no measured throughputs given: no estimates")
    return lines


def checkpoint_problems(plan: FullPlan) -> list[str]:
    """One ``checkpoint ...`` line per pretrained checkpoint of the plan's runs that could not be
    loaded here (no such folder, a hub id not in the local cache): the run would fail on it."""
    seen: dict[str, str | None] = {}
    for step in plan.steps:
        if isinstance(step, FullRunStep) and step.config is not None:
            cfg = step.config
            value = cfg.model_args.get("pretrained")
            if isinstance(value, str) and value not in seen:
                try:
                    check_pretrained(value, cfg.model_args.get("local_files_only", True))
                    seen[value] = None
                except ConfigError as e:
                    seen[value] = str(e)
    return [f"checkpoint problem: {why}" for why in seen.values() if why]
