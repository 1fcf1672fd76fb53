"""One ``bench run``: build, train (or load), evaluate, record.

The flow: run config -> registries -> model (which owns its preprocessing) -> DataModule
with the model's transform -> Lightning ``Trainer.fit`` (tiny sizes; skipped when a
checkpoint for the same training config is cached) -> ``Trainer.test`` over a
:class:`~benchmark.evaluation.RetrievalEvaluator` -> one result file, written atomically.

Trained checkpoints are cached under ``<cache_dir>/checkpoints/<model>__<dataset>__<hash>``
where the hash covers everything that determines training (model options, data options,
training settings, seed); ``retrain=True`` ignores the cache. ``skip_existing=True``
returns early when the result file already holds a run of the same config.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmark.config import ConfigError, RunConfig, from_dict, to_dict
from benchmark.registry import DATASETS, MODELS
from benchmark.results import SCHEMA_VERSION, atomic_write_json, environment, load_result, ResultFileError

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


def checkpoint_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) / "checkpoints" / f"{cfg.model}__{cfg.dataset}__{cfg.size}__{cfg.training_hash()}"


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
    return model_cls, model_config, dm


def _trainer(cfg: RunConfig, *, fit: bool, progress: bool, name: str):
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
    if not fit:
        return L.Trainer(logger=False, enable_checkpointing=False, **common)
    logger = TensorBoardLogger(save_dir=str(Path(cfg.cache_dir) / "tensorboard"), name=name, version=cfg.training_hash())
    return L.Trainer(
        max_epochs=cfg.train.max_epochs,
        precision=cfg.train.precision,
        gradient_clip_val=cfg.train.gradient_clip_val,
        limit_train_batches=cfg.train.limit_train_batches,
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        logger=logger,
        enable_checkpointing=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        **common,
    )


def _save_atomically(model, directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_checkpoint(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(cfg: RunConfig, *, retrain: bool = False, skip_existing: bool = False, progress: bool = True) -> RunOutcome:
    import lightning as L
    import torch

    path = cfg.result_path()
    if skip_existing and path.exists():
        try:
            if load_result(path)["config_hash"] == cfg.config_hash():
                return RunOutcome(path, None, skipped=True)
        except ResultFileError:
            pass  # unreadable: run again and replace it
    t0 = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cls, model_config, dm = _resolve(cfg)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    dm.prepare_data()
    timings["prepare_data_s"] = time.perf_counter() - t

    ckpt = checkpoint_dir(cfg)
    trained = False
    t = time.perf_counter()
    if cfg.train.max_epochs > 0 and ckpt.exists() and not retrain:
        model = model_cls.load_checkpoint(ckpt)
        timings["load_checkpoint_s"] = time.perf_counter() - t
    else:
        model = model_cls.create(model_config, cfg.train.optim, dm.vocabulary_texts())
        if cfg.train.max_epochs > 0:
            dm.set_transform(model.image_transform())
            trainer = _trainer(cfg, fit=True, progress=progress, name=f"{cfg.model}__{cfg.dataset}")
            trainer.fit(model, datamodule=dm)
            if trainer.is_global_zero:
                _save_atomically(model, ckpt)
            trained = True
            timings["train_s"] = time.perf_counter() - t

    from benchmark.evaluation import RetrievalEvaluator

    dm.set_transform(model.image_transform())
    eval_set = dm.eval_set()
    evaluator = RetrievalEvaluator(model, eval_set, cfg.eval)
    t = time.perf_counter()
    tester = _trainer(cfg, fit=False, progress=progress, name="")
    tester.test(evaluator, dataloaders=dm.test_dataloader(), verbose=False)
    timings["evaluate_s"] = time.perf_counter() - t
    timings.update(evaluator.timings)
    timings["total_s"] = time.perf_counter() - t0

    result = {
        "schema": SCHEMA_VERSION,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "tag": cfg.tag,
        "task": "retrieval",
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "config_hash": cfg.config_hash(),
        "model_config": to_dict(model_config),
        "metrics": evaluator.results,
        "per_query": {k: _jsonable(v) for k, v in evaluator.per_query.items()}
        | {"complexity": eval_set.complexity.tolist()},
        "environment": environment(str(tester.strategy.root_device)),
        "provenance": eval_set.provenance()
        | {"data_root": dm.config.root, "checkpoint": str(ckpt) if cfg.train.max_epochs > 0 else None,
           "trained_this_run": trained},
        "data": {"skipped": dm.skipped()},
        "timings": timings,
    }
    if tester.is_global_zero:
        atomic_write_json(path, result)
    return RunOutcome(path, result, trained=trained)


def _jsonable(a) -> list:
    import numpy as np

    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        return [None if not np.isfinite(x) else round(float(x), 6) for x in arr]
    return arr.tolist()
