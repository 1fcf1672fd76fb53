"""What ``bench reproduce`` adds for ``--size full`` and ``--dry-run``: the options turned into a
:class:`~benchmark.reproduce.full.FullPlan` (bad options raise :class:`ConfigError`), and the
lines a dry run prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import benchmark
from benchmark.config import ConfigError
from benchmark.reporting.options import ReportOptions
from benchmark.reproduce.estimate import CostError, load_costs
from benchmark.reproduce.full import FullPlan, build_full_plan, describe_full
from benchmark.reproduce.plan import Plan
from benchmark.reproduce.steps import RunSettings

#: the throughputs ``scripts/bench_gpu.py`` measured (H200, full shapes), shipped with the suite's results
DEFAULT_GPU_COSTS = Path(benchmark.__file__).resolve().parents[1] / "results" / "gpu" / "gpu_costs.json"


def full_plan(
    overrides: Sequence[dict],
    *,
    data_root: Path | None,
    models: Sequence[str],
    pretrained_blip2: str,
    pretrained_clip: str,
    gpu_costs: Path | None,
    results_dir: Path,
    out_dir: Path,
    cache_dir: Path | None,
    only: Sequence[str],
    report: ReportOptions,
) -> FullPlan:
    if data_root is None:
        raise ConfigError("--size full needs --data-root DIR (the folder holding coco/, medpix/, rsicap/)")
    for flag, value in (("--pretrained-blip2", pretrained_blip2), ("--pretrained-clip", pretrained_clip)):
        if not value.strip():
            raise ConfigError(f"{flag}: expected a hub id or a local checkpoint path, got an empty string")
    path = gpu_costs if gpu_costs is not None else (DEFAULT_GPU_COSTS if DEFAULT_GPU_COSTS.is_file() else None)
    try:
        costs = None if path is None else load_costs(path)
    except CostError as e:
        raise ConfigError(str(e)) from None
    return build_full_plan(
        data_root,
        overrides,
        pretrained={"blip2": pretrained_blip2, "clip": pretrained_clip},
        results_dir=results_dir,
        out_dir=out_dir,
        cache_dir=cache_dir,
        only=only,
        model_names=models,
        report=report,
        costs=costs,
    )


def dry_run_lines(plan: Plan, settings: RunSettings) -> list[str]:
    """A full plan's detailed lines; a tiny plan's step titles with what each would do
    (``existing`` where ``--skip-existing`` keeps its result file; nothing runs either way)."""
    if isinstance(plan, FullPlan):
        return describe_full(plan, settings)
    return [f"[{i}] {step.title}: {step.preview(settings)}" for i, step in enumerate(plan.steps, 1)]
