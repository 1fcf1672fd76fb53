"""One ``bench run``: build, train (or load), evaluate, record.

The flow: run config -> registries -> model (which owns its preprocessing) -> DataModule
with the model's transform -> Lightning ``Trainer.fit`` (tiny sizes; skipped when a
checkpoint for the same training config is cached) -> the task's ``evaluate``
(``--task``, registered in ``benchmark.registry.TASKS``; retrieval: ``Trainer.test`` over a
:class:`~benchmark.evaluation.RetrievalEvaluator`) -> one result file, written atomically.

Trained checkpoints are cached under ``<cache_dir>/checkpoints/<model>__<dataset>__<hash>``
where the hash covers everything that determines training (model options, data options,
training settings, seed); ``retrain=True`` ignores the cache. ``skip_existing=True``
returns early when the result file already holds a run of the same config.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmark.atomic import save_atomically
from benchmark.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    build_run_config,
    from_dict,
    model_defaults,
    stable_hash,
    to_dict,
)
from benchmark.preflight import check_run, load_cached_checkpoint
from benchmark.registry import DATASETS, MODELS, TASKS
from benchmark.resume import ResumePoint, resume_dir, resume_from
from benchmark.results import SCHEMA_VERSION, atomic_write_json, environment, load_result, ResultFileError
from benchmark.tasks.base import TaskContext
from datamodules.loading import LoaderRuntime, resolve_workers

DATA_ROOT_ENV = "INSTRUCTSEE_DATA_ROOT"


@dataclass
class RunOutcome:
    path: Path
    result: dict[str, Any] | None
    skipped: bool = False
    trained: bool = False


def data_root(cfg: RunConfig) -> str:
    """``--data-root``; else generated data in the cache (synthetic) or ``$INSTRUCTSEE_DATA_ROOT/<dataset>``."""
    if cfg.data.root:
        return cfg.data.root
    if cfg.dataset == "synthetic":
        return str(Path(cfg.cache_dir) / "data")
    if os.environ.get(DATA_ROOT_ENV):
        return str(Path(os.environ[DATA_ROOT_ENV]) / cfg.dataset)
    return ""


def model_identity(model_cls, model_config: Any) -> dict:
    """The resolved model config (a config object or the dict a result file stores; defaults
    included) in JSON form, without the fields the runner fills with dependency checkpoints
    (``checkpoint_dependencies``: cache paths, which say nothing about the model)."""
    deps = set(getattr(model_cls, "checkpoint_dependencies", {}) or {})
    return {k: v for k, v in json.loads(json.dumps(to_dict(model_config))).items() if k not in deps}


def checkpoint_dir(cfg: RunConfig, dependencies: dict[str, Any] | None = None, model_config: Any = None,
                   model_cls: Any = None, content: dict[str, Any] | None = None) -> Path:
    """The cached checkpoint of a training config (and of the checkpoints it was built on).

    With ``model_config`` the key also covers the *resolved* model config (defaults
    included, the dependency fields of ``model_cls`` -- cache paths -- left out): a changed
    model default then trains a new checkpoint instead of loading one trained under the old
    default. ``content``: the DataModule's ``content_identity()`` (the ``folder`` dataset's
    annotations hash; {} for the fixed datasets, whose keys are then unchanged), so that two
    user folders with the same options never share a checkpoint."""
    h = cfg.training_hash()
    if content:
        h = stable_hash([h, content])
    if dependencies:
        h = stable_hash([h, {k: v["training_hash"] for k, v in sorted(dependencies.items())}])
    if model_config is not None:
        h = stable_hash([h, model_identity(model_cls, model_config)])
    return Path(cfg.cache_dir) / "checkpoints" / f"{cfg.model}__{cfg.dataset}__{cfg.size}__{h}"


# -- checkpoint dependencies --------------------------------------------------------------
# A model class may declare ``checkpoint_dependencies = {config_field: registered_model}``:
# at tiny size, a field left empty is filled with the checkpoint of that other model trained
# on the same dataset with the same seed (its shipped base config, the run's data options
# and hardware settings, then ``model_args.dependency_overrides[field]``), trained through
# this runner if it is not cached. E.g. BLIP2's frozen vision tower is the tiny CLIP's.
_INHERITED_TRAIN = ("accelerator", "devices", "num_nodes", "strategy", "num_threads", "deterministic", "precision",
                    "gather_negatives")


def dependency_config(cfg: RunConfig, model: str, overrides: dict | None = None) -> RunConfig:
    """The run config of a dependency of ``cfg``: ``model``'s base config on the same data and seed."""
    data = to_dict(cfg.data)
    data.pop("batch_size")  # the dependency trains with its own batch size
    inherited = {"model": model, "dataset": cfg.dataset, "size": "tiny", "seed": cfg.seed,
                 "cache_dir": cfg.cache_dir, "results_dir": cfg.results_dir, "data": data,
                 "train": {k: getattr(cfg.train, k) for k in _INHERITED_TRAIN}}
    return build_run_config(model_defaults(model), inherited, overrides or {})


def resolve_dependencies(cfg: RunConfig, model_cls, model_config, *, progress: bool = False, train: bool = True):
    """``(model_config with its dependency fields filled, {field: provenance})``; ``train=False``:
    a dependency that is not cached is an error instead of being trained."""
    deps = getattr(model_cls, "checkpoint_dependencies", {}) or {}
    if cfg.size != "tiny" or not deps:
        return model_config, {}
    overrides = getattr(model_config, "dependency_overrides", None) or {}
    unknown = sorted(set(overrides) - set(deps))
    if unknown:
        raise ConfigError(f"model_args.dependency_overrides: {unknown[0]!r} is not a dependency "
                          f"(dependencies: {', '.join(sorted(deps))})")
    resolved: dict[str, Any] = {}
    for name, dep_model in sorted(deps.items()):
        given = getattr(model_config, name)
        if given:
            resolved[name] = {"model": dep_model, "checkpoint": str(given), "given": True,
                              "training_hash": stable_hash(str(given))}
            continue
        dep_cfg = dependency_config(cfg, dep_model, overrides.get(name))
        t = time.perf_counter()
        ckpt, trained = ensure_checkpoint(dep_cfg, progress=progress, train=train,
                                          announce=f"dependency {name} of {cfg.model}")
        model_config = replace(model_config, **{name: str(ckpt)})
        resolved[name] = {"model": dep_model, "checkpoint": str(ckpt), "given": False, "trained_this_run": trained,
                          "training_hash": ckpt.name.rsplit("__", 1)[-1], "config": to_dict(dep_cfg),
                          "seconds": time.perf_counter() - t}
    return model_config, resolved


def inherited_settings_note(cfg: RunConfig) -> str:
    """The training settings a dependency inherits from the run that differ from the defaults
    (they are part of its training hash, so they select -- or train -- another checkpoint)."""
    default = TrainConfig()
    changed = [f"train.{k}={getattr(cfg.train, k)}" for k in _INHERITED_TRAIN
               if getattr(cfg.train, k) != getattr(default, k)]
    return f"; inherited from this run: {', '.join(changed)}" if changed else ""


def ensure_checkpoint(cfg: RunConfig, *, progress: bool = False, train: bool = True,
                      announce: str | None = None) -> tuple[Path, bool]:
    """The cached checkpoint of ``cfg``'s training, trained (and cached) now if absent
    (``train=False``: absent is a :class:`ConfigError` naming the run that trains it).
    ``announce``: before training, say on stderr what is trained and why (e.g. a dependency)."""
    import lightning as L

    if cfg.train.max_epochs < 1:
        raise ConfigError(f"a dependency ({cfg.model}) must be trained: train.max_epochs must be >= 1")
    model_cls, model_config, dm = _resolve(cfg)
    model_config, deps = resolve_dependencies(cfg, model_cls, model_config, progress=progress, train=train)
    ckpt = checkpoint_dir(cfg, deps, model_config, model_cls, dm.content_identity())
    if ckpt.exists():
        return ckpt, False
    if not train:
        raise ConfigError(f"no trained {cfg.model} checkpoint for this config in {Path(cfg.cache_dir) / 'checkpoints'} "
                          f"(run `bench run --model {cfg.model} --dataset {cfg.dataset} --seed {cfg.seed}` first)")
    if announce:
        print(f"training {cfg.model} ({announce}; seed {cfg.seed}{inherited_settings_note(cfg)}): no cached "
              f"checkpoint {ckpt.name} in {ckpt.parent}", file=sys.stderr, flush=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm.prepare_data()
    model = model_cls.create(model_config, cfg.train.optim, dm.vocabulary_texts())
    _install_item_loader(cfg, model, dm, progress=progress)
    _fit_and_save(cfg, model, dm, ckpt, progress=progress)
    return ckpt, True


def _install_item_loader(cfg: RunConfig, model, dm, *, progress: bool = False):
    """The model's item loader (e.g. a frozen-feature cache) on the DataModule, if it has one;
    a feature cache stores the run's storage dtype and extracts in a Lightning ``predict``
    loop on the run's hardware (:mod:`benchmark.extraction`)."""
    import torch

    from benchmark.extraction import LightningExtractor

    loader = model.item_loader(Path(cfg.cache_dir) / "features") if hasattr(model, "item_loader") else None
    if loader is not None and hasattr(loader, "configure"):
        precision, storage = cfg.eval_settings()
        t = cfg.train
        loader.configure(dtype=getattr(torch, storage), memmap_min_bytes=int(cfg.eval.memmap_min_mb * 2**20),
                         extractor=LightningExtractor(t.accelerator, t.devices, t.num_nodes, t.strategy, precision,
                                                      _extraction_workers(cfg, dm), progress))
    dm.set_transform(model.image_transform())
    dm.set_item_loader(loader)
    return loader


def _extraction_workers(cfg: RunConfig, dm) -> int:
    """DataLoader workers of the feature extraction: ``data.num_workers``, auto resolved for the
    dataset with one process per device of the node (datamodules/loading.py)."""
    runtime = LoaderRuntime(processes_per_node=cfg.train.devices)
    return resolve_workers(cfg.data.num_workers, dm.parallel_loading, runtime)


def _fit_and_save(cfg: RunConfig, model, dm, ckpt: Path, *, progress: bool):
    """Train ``model`` (resuming an interrupted run of the same training from its resume point)
    and save it atomically as the cached checkpoint ``ckpt``; the resume point is then removed."""
    from lightning_modules.components.cross_rank import CrossRankNegatives

    if isinstance(model, CrossRankNegatives):  # contrastive negatives from every DDP process (or not)
        model.gather_negatives = cfg.train.gather_negatives
    if cfg.train.grad_checkpointing:  # activation checkpointing of the trained layers (the model's seam)
        from lightning_modules.grad_checkpointing import enable_grad_checkpointing
        enable_grad_checkpointing(model, cfg.model, error=ConfigError)
    for split in ("train", "val"):  # frozen features extracted (once, if not cached) before the fit loop starts
        dm.item_table(split)
    resume = resume_dir(cfg.cache_dir, ckpt)
    trainer = _trainer(cfg, fit=True, progress=progress, name=f"{cfg.model}__{cfg.dataset}",
                       callbacks=[ResumePoint(resume, cfg.train.checkpoint_every_n_steps)])
    dm.set_runtime(LoaderRuntime.of_trainer(trainer))  # pinned memory on a GPU, auto workers per process
    start = resume_from(resume, cfg.train.resume)
    if start and trainer.is_global_zero:
        print(f"resuming the training of {cfg.model} from {start}", file=sys.stderr, flush=True)
    trainer.fit(model, datamodule=dm, ckpt_path=start)
    if trainer.is_global_zero:
        save_atomically(model, ckpt)
        shutil.rmtree(resume, ignore_errors=True)
    trainer.strategy.barrier("checkpoint-saved")
    return trainer


def _resolve(cfg: RunConfig):
    model_cls = MODELS.get(cfg.model)
    model_config = from_dict(model_cls.Config, cfg.model_args, "model_args")
    pretrained = getattr(model_config, "pretrained", None)
    if cfg.size == "full" and not pretrained:
        raise ConfigError("size 'full' needs model_args.pretrained: a hub id or a local checkpoint path")
    if cfg.size == "tiny" and pretrained:
        raise ConfigError("model_args.pretrained is set: use --size full for pretrained checkpoints")
    dm_cls = DATASETS.get(cfg.dataset)
    dm = dm_cls(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
    dm.set_check_cache(Path(cfg.cache_dir) / "image_checks")  # image verdicts kept across runs and ranks
    return model_cls, model_config, dm


def _trainer(cfg: RunConfig, *, fit: bool, progress: bool, name: str, callbacks: list | None = None):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    common = dict(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=cfg.train.deterministic,
    )
    if not fit:  # evaluation: the run's hardware and eval precision; batches dealt to ranks by the DataModule
        return L.Trainer(logger=False, enable_checkpointing=False, precision=cfg.eval_settings()[0],
                         use_distributed_sampler=False, **common)
    logger = TensorBoardLogger(save_dir=str(Path(cfg.cache_dir) / "tensorboard"), name=name, version=cfg.training_hash())
    return L.Trainer(
        max_epochs=cfg.train.max_epochs,
        precision=cfg.train.precision,
        gradient_clip_val=cfg.train.gradient_clip_val,
        limit_train_batches=cfg.train.limit_train_batches,
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        logger=logger,
        enable_checkpointing=False,  # the resume point is benchmark.resume.ResumePoint, atomic
        callbacks=callbacks,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        **common,
    )


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


def run(cfg: RunConfig, *, retrain: bool = False, skip_existing: bool = False, progress: bool = True) -> RunOutcome:
    import lightning as L
    import torch

    path = cfg.result_path()
    t0 = time.perf_counter()
    task = TASKS.get(cfg.task)()
    task.check(cfg)  # before anything is trained
    check_run(cfg)  # the config as a whole, on this machine, before any data is prepared
    model_cls, model_config, dm = _resolve(cfg)
    if skip_existing and path.exists() and _up_to_date(path, cfg, model_cls, model_config, dm.content_identity()):
        return RunOutcome(path, None, skipped=True)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if cfg.checkpoint:
        return _evaluate(cfg, task, load_cached_checkpoint(model_cls, _given_checkpoint(cfg), given=True), dm, t0,
                         progress=progress)
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
        model = load_cached_checkpoint(model_cls, ckpt)
        timings["load_checkpoint_s"] = time.perf_counter() - t
    else:
        model = model_cls.create(model_config, cfg.train.optim, dm.vocabulary_texts())
        if cfg.train.max_epochs > 0:
            loader = _install_item_loader(cfg, model, dm, progress=progress)
            _fit_and_save(cfg, model, dm, ckpt, progress=progress)
            trained = True
            timings["train_s"] = time.perf_counter() - t

    return _evaluate(cfg, task, model, dm, t0, progress=progress, model_config=model_config, loader=loader,
                     checkpoint=ckpt if cfg.train.max_epochs > 0 else None, trained=trained,
                     dependencies=dependencies, timings=timings)


def _given_checkpoint(cfg: RunConfig) -> Path:
    path = Path(cfg.checkpoint or "")
    if not path.is_dir():
        raise ConfigError(f"--checkpoint {cfg.checkpoint}: not a folder (expected a trained suite checkpoint, "
                          f"e.g. {Path(cfg.cache_dir) / 'checkpoints'}/<model>__<dataset>__<size>__<hash>)")
    return path


def _evaluate(cfg: RunConfig, task, model, dm, t0: float, *, progress: bool, model_config: Any = None,
              loader: Any = None, checkpoint: Path | None = None, trained: bool = False,
              dependencies: dict | None = None, timings: dict[str, float] | None = None) -> RunOutcome:
    """Evaluate ``model`` with the run's task, measure its cost, write the result file."""
    path = cfg.result_path()
    timings = dict(timings or {})
    dependencies = dependencies or {}
    if cfg.checkpoint:
        checkpoint, model_config = Path(cfg.checkpoint), getattr(model, "config", model_config)
        t = time.perf_counter()
        dm.prepare_data()
        timings["prepare_data_s"] = time.perf_counter() - t
    if loader is None:
        loader = _install_item_loader(cfg, model, dm, progress=progress)
    ckpt = checkpoint
    t = time.perf_counter()
    tester = _trainer(cfg, fit=False, progress=progress, name="")
    dm.set_runtime(LoaderRuntime.of_trainer(tester))  # pinned memory on a GPU, auto workers per process
    ctx = TaskContext(cfg, model, dm, tester, checkpoint, progress)
    evaluation = task.evaluate(ctx)
    timings["evaluate_s"] = time.perf_counter() - t
    timings.update(evaluation.timings)
    timings.update(getattr(loader, "timings", {}))
    costs = None
    if cfg.eval.measure and task.measures_cost and tester.is_global_zero:  # benchmark/measure/run_costs.py
        from benchmark.measure.run_costs import measure_run

        t = time.perf_counter()
        costs = measure_run(cfg, model, model_config, dm, evaluation.eval_set, device=str(tester.strategy.root_device),
                            checkpoint=ckpt if ckpt is not None and ckpt.is_dir() else None)
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
        | {"data_root": dm.config.root, "checkpoint": str(ckpt) if ckpt is not None else None,
           "trained_this_run": trained}
        | ({"dependencies": dependencies} if dependencies else {})
        | ({"features": loader.provenance} if getattr(loader, "provenance", None) else {}),
        "data": {"skipped": dm.skipped(), "loader": dm.loader_settings()},
        "timings": timings,
    } | evaluation.extra
    if costs is not None:
        result["metrics"] |= costs.metrics
        result["measurement"] = costs.record
    if hasattr(model, "method_config"):  # e.g. token reduction: the settings and mode that ran
        result["method"] = model.method_config()
    if tester.is_global_zero:
        atomic_write_json(path, result)
    return RunOutcome(path, result, trained=trained)

