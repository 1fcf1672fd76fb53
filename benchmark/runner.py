"""One ``bench run``: build, train (or load), evaluate, record.

The flow: run config -> the checkpoint store resolves the model class, its config and the
DataModule (:func:`benchmark.store.resolve_run`) -> the model (which owns its preprocessing)
is loaded from the store's cache, or created, fitted and saved there
(:func:`benchmark.training.create_fit_save`) -> the task's ``evaluate`` (``--task``,
registered in ``benchmark.registry.TASKS``; retrieval: ``Trainer.test`` over a
:class:`~benchmark.evaluation.RetrievalEvaluator`) -> cost measurement -> one result file,
written atomically. ``retrain=True`` ignores the cache; ``skip_existing=True`` returns early
when the result file already holds a run of the same config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmark.config import ConfigError, RunConfig, to_dict
from benchmark.environment import environment
from benchmark.measure.run_costs import measure_run
from benchmark.portable import portable
from benchmark.preflight import check_run, create_model, load_cached_checkpoint
from benchmark.pretrained_record import pretrained_record
from benchmark.registry import TASKS
from benchmark.results import SCHEMA_VERSION, ResultFileError, atomic_write_json, load_result
from benchmark.store import (
    checkpoint_dir,
    model_identity,
    path_roots,
    pretrained_of,
    resolve_dependencies,
    resolve_run,
    trained_config,
    training_config,
    with_eval_settings,
)
from benchmark.tasks.base import TaskContext
from benchmark.training import create_fit_save, install_item_loader, trainer
from datamodules.loading import LoaderRuntime
from lightning_modules.contract import MethodSettings


@dataclass
class RunOutcome:
    path: Path
    result: dict[str, Any] | None
    skipped: bool = False
    trained: bool = False
    #: this process wrote the result file (under DDP rank 0 only: the others say nothing)
    written: bool = True


def _up_to_date(path: Path, cfg: RunConfig, model_cls, model_config, content: dict[str, Any] | None = None) -> bool:
    """The result file holds this run: the same run config *and* the same resolved model
    config (a changed model default changes the model even when the run config does not),
    and the same data content (``content``: the DataModule's ``content_identity()``, recorded
    in the result's provenance; {} for the fixed datasets). Dependency fields (checkpoint
    paths filled in by the runner) are not compared."""
    try:
        stored = load_result(path)
    except ResultFileError:
        return False  # unreadable: run again and replace it
    before = model_identity(model_cls, stored.get("model_config") or {})
    if content and (stored.get("provenance") or {}).get("content_identity") != content:
        return False
    return stored["config_hash"] == cfg.config_hash() and model_identity(model_cls, model_config) == before


def result_is_current(cfg: RunConfig) -> bool:
    """``cfg``'s result file exists and holds this run (what ``skip_existing`` keeps); nothing runs,
    and the machine checks a run makes first (``check_run``) are not made."""
    path = cfg.result_path()
    if not path.exists():
        return False
    parts = resolve_run(cfg)
    return _up_to_date(path, cfg, parts.model_cls, parts.model_config, parts.dm.content_identity())


def run(cfg: RunConfig, *, retrain: bool = False, skip_existing: bool = False, progress: bool = True) -> RunOutcome:
    path = cfg.result_path()
    t0 = time.perf_counter()
    task = TASKS.get(cfg.task)()
    task.check(cfg)  # before anything is trained
    check_run(cfg)  # the config as a whole, on this machine, before any data is prepared
    parts = resolve_run(cfg)
    model_cls, model_config, dm = parts.model_cls, parts.model_config, parts.dm
    if skip_existing and path.exists() and _up_to_date(path, cfg, model_cls, model_config, dm.content_identity()):
        return RunOutcome(path, None, skipped=True)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if cfg.checkpoint:
        given = load_cached_checkpoint(model_cls, _given_checkpoint(cfg), given=True)
        return _evaluate(cfg, task, with_eval_settings(given, model_config), dm, t0, progress=progress)
    model_config, dependencies = resolve_dependencies(cfg, model_cls, model_config, progress=progress)
    if dependencies:
        timings["dependencies_s"] = time.perf_counter() - t
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same run whether they were cached or not

    t = time.perf_counter()
    dm.prepare_data()
    timings["prepare_data_s"] = time.perf_counter() - t

    ckpt = checkpoint_dir(cfg, dependencies, model_config, model_cls, dm.content_identity())
    trained = False
    loader = None
    t = time.perf_counter()
    if cfg.train.max_epochs > 0 and ckpt.exists() and not retrain:
        model = with_eval_settings(load_cached_checkpoint(model_cls, ckpt), model_config)
        timings["load_checkpoint_s"] = time.perf_counter() - t
    elif cfg.train.max_epochs > 0:
        model, loader = create_fit_save(
            training_config(cfg, model_cls),
            model_cls,
            trained_config(model_cls, model_config),
            dm,
            ckpt,
            progress=progress,
        )
        model = with_eval_settings(model, model_config)
        trained = True
        timings["train_s"] = time.perf_counter() - t
    else:
        model = create_model(model_cls, model_config, cfg.train.optim, dm.vocabulary_texts())

    return _evaluate(
        cfg,
        task,
        model,
        dm,
        t0,
        progress=progress,
        model_config=model_config,
        loader=loader,
        checkpoint=ckpt if cfg.train.max_epochs > 0 else None,
        trained=trained,
        dependencies=dependencies,
        timings=timings,
    )


def _given_checkpoint(cfg: RunConfig) -> Path:
    path = Path(cfg.checkpoint or "")
    if not path.is_dir():
        raise ConfigError(
            f"--checkpoint {cfg.checkpoint}: not a folder (expected a trained suite checkpoint, "
            f"e.g. {Path(cfg.cache_dir) / 'checkpoints'}/<model>__<dataset>__<size>__<hash>)"
        )
    return path


def _evaluate(
    cfg: RunConfig,
    task,
    model,
    dm,
    t0: float,
    *,
    progress: bool,
    model_config: Any = None,
    loader: Any = None,
    checkpoint: Path | None = None,
    trained: bool = False,
    dependencies: dict | None = None,
    timings: dict[str, float] | None = None,
) -> RunOutcome:
    """Evaluate ``model`` with the run's task, measure its cost, write the result file."""
    path = cfg.result_path()
    timings = dict(timings or {})
    dependencies = dependencies or {}
    if cfg.checkpoint:
        checkpoint, model_config = Path(cfg.checkpoint), model.config
        t = time.perf_counter()
        dm.prepare_data()
        timings["prepare_data_s"] = time.perf_counter() - t
    if loader is None:
        loader = install_item_loader(cfg, model, dm, progress=progress)
    ckpt = checkpoint
    t = time.perf_counter()
    tester = trainer(cfg, fit=False, progress=progress, name="")
    dm.set_runtime(LoaderRuntime.of_trainer(tester))  # pinned memory on a GPU, auto workers per process
    ctx = TaskContext(cfg, model, dm, tester, checkpoint, progress)
    evaluation = task.evaluate(ctx)
    timings["evaluate_s"] = time.perf_counter() - t
    timings.update(evaluation.timings)
    timings.update(getattr(loader, "timings", {}))
    costs = None
    if cfg.eval.measure and task.measures_cost and tester.is_global_zero:  # benchmark/measure/run_costs.py
        t = time.perf_counter()
        costs = measure_run(
            cfg,
            model,
            model_config,
            dm,
            evaluation.eval_set,
            device=str(tester.strategy.root_device),
            checkpoint=ckpt if ckpt is not None and ckpt.is_dir() else None,
        )
        timings["measure_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    result = {
        "schema": SCHEMA_VERSION,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "tag": cfg.tag,
        "task": cfg.task,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "config_hash": cfg.config_hash(),
        "model_config": to_dict(model_config),
        "metrics": evaluation.metrics,
        "per_query": evaluation.per_query,
        "environment": environment(str(tester.strategy.root_device)),
        "evaluation": dict(zip(("precision", "storage_dtype"), cfg.eval_settings(), strict=True))
        | {"world_size": tester.world_size},
        "provenance": evaluation.provenance
        | dm.describe()
        | {
            "data_root": dm.config.root,
            "checkpoint": str(ckpt) if ckpt is not None else None,
            "trained_this_run": trained,
        }
        | ({"dependencies": dependencies} if dependencies else {})
        | ({"pretrained": pretrained_record(base)} if (base := pretrained_of(model_config)) else {})
        | ({"features": loader.provenance} if getattr(loader, "provenance", None) else {}),
        "data": {"skipped": dm.skipped(), "loader": dm.loader_settings()},
        "timings": timings,
    } | evaluation.extra
    if costs is not None:
        result["metrics"] |= costs.metrics
        result["measurement"] = costs.record
    if isinstance(model, MethodSettings):  # e.g. token reduction: the settings and mode that ran
        result["method"] = model.method_config()
    if tester.is_global_zero:
        atomic_write_json(path, portable(result, path_roots(cfg)))  # no machine paths in the file
    return RunOutcome(path, result, trained=trained, written=tester.is_global_zero)
