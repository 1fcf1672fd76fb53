"""The tiny suite ``bench regress`` runs: every registered model (or a subset), tiny, on SynthScenes.

Each model runs with its shipped base config, the suite's tag (``regress``) and the caller's
overrides, through :func:`benchmark.runner.run`, into a results folder of its own. By default
the cache is a fresh temporary folder, so every model and its dependencies are trained from
scratch: training is seeded (``seed_everything(workers=True)``) and deterministic
(``Trainer(deterministic=True)``, i.e. ``torch.use_deterministic_algorithms``), so the same
seed on the same machine gives the same metrics. ``--update`` writes the runs into the
baseline folder (with the shipped tolerances, if the folder has none).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmark.config import ConfigError, RunConfig, build_run_config, model_defaults
from benchmark.preflight import check_run
from benchmark.registry import MODELS
from benchmark.regression.tolerances import FILE, shipped_path
from benchmark.results import atomic_write_json, load_result, load_result_files
from benchmark.runner import run
from datamodules.safe_json import loads_json

DATASET = "synthetic"
TAG = "regress"


def suite_models(subset: str | None) -> list[str]:
    """Every registered model, or the comma-separated ``subset`` (validated, in the given order)."""
    if not subset:
        return MODELS.names()
    names = [s.strip() for s in subset.split(",") if s.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ConfigError(
            f"--subset: unknown model(s) {unknown or subset!r}; valid models: {', '.join(MODELS.names())}"
        )
    return list(dict.fromkeys(names))


def suite_configs(
    models: Sequence[str], overrides: Sequence[dict], results_dir: Path, cache_dir: Path
) -> list[RunConfig]:
    fixed = {
        "dataset": DATASET,
        "size": "tiny",
        "tag": TAG,
        "results_dir": str(results_dir),
        "cache_dir": str(cache_dir),
    }
    return [build_run_config(model_defaults(m), {"model": m, **fixed}, *overrides) for m in models]


def run_suite(
    models: Sequence[str],
    overrides: Sequence[dict] = (),
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
    echo=print,
) -> dict[str, dict]:
    """Run the suite into a temporary results folder; result-file name -> result."""
    with tempfile.TemporaryDirectory(prefix="bench_regress_") as tmp:
        cache = Path(cache_dir) if cache_dir else Path(tmp) / "cache"
        configs = suite_configs(models, overrides, Path(tmp) / "results", cache)
        for cfg in configs:  # every config is valid, on this machine, before the first run
            check_run(cfg)
        for i, cfg in enumerate(configs, 1):
            echo(f"[{i}/{len(configs)}] {cfg.model} ({cfg.size}, {cfg.dataset}, seed {cfg.seed})")
            run(cfg, progress=progress)
        return {Path(r.pop("_path")).name: r for r in load_result_files(Path(tmp) / "results")}


def results_in(directory: Path, models: Sequence[str] | None = None) -> dict[str, dict]:
    """Result files already in ``directory`` (those of ``models`` only, if given; not its tolerances file)."""
    if not Path(directory).is_dir():
        raise ConfigError(f"--from-results {directory}: not a folder (expected a folder of result files)")
    found = {p.name: load_result(p) for p in sorted(Path(directory).glob("*.json")) if p.name != FILE}
    return {k: v for k, v in found.items() if models is None or v.get("model") in models}


def update_baseline(results: dict[str, dict], baseline_dir: Path) -> list[Path]:
    """Write ``results`` as the baseline (atomically, file by file); add the shipped tolerances if absent."""
    baseline_dir = Path(baseline_dir)
    written = []
    for name, result in sorted(results.items()):
        atomic_write_json(baseline_dir / name, result)
        written.append(baseline_dir / name)
    if not (baseline_dir / FILE).exists():
        atomic_write_json(
            baseline_dir / FILE, loads_json(shipped_path().read_bytes(), f"tolerances file {shipped_path()}")
        )
        written.append(baseline_dir / FILE)
    return written
