"""Training a registered model: the one "create, fit, save" path of the suite.

:func:`create_fit_save` builds a new model from its config (``SuiteModel.create``), installs
its item loader on the DataModule, fits it with a Lightning ``Trainer`` on the run's
hardware (resuming an interrupted fit of the same training from its resume point,
:mod:`benchmark.resume`) and saves it atomically as a cached checkpoint folder
(:func:`save_atomically`). The checkpoint store (:mod:`benchmark.store`) and the runner
(:mod:`benchmark.runner`) both train through it; the VQA models of ``--task vqa`` are
saved through :func:`save_atomically` too.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from benchmark.atomic import save_atomically
from benchmark.config import ConfigError, RunConfig
from benchmark.extraction import LightningExtractor
from benchmark.preflight import create_model
from benchmark.resume import ResumePoint, resume_dir, resume_from
from datamodules.loading import LoaderRuntime, resolve_workers
from lightning_modules.components.cross_rank import CrossRankNegatives
from lightning_modules.contract import ItemLoading
from lightning_modules.grad_checkpointing import enable_grad_checkpointing

if TYPE_CHECKING:
    from lightning.fabric.connector import _PRECISION_INPUT


def trainer(cfg: RunConfig, *, fit: bool, progress: bool, name: str, callbacks: list | None = None) -> L.Trainer:
    """The run's Lightning ``Trainer``: ``fit`` -- the training settings, a TensorBoard logger under
    the cache, no Lightning checkpointing; else evaluation -- the run's eval precision, no logger."""
    common: dict[str, Any] = dict(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=cfg.train.deterministic,
    )
    if not fit:  # evaluation: the run's hardware and eval precision; batches dealt to ranks by the DataModule
        return L.Trainer(
            logger=False,
            enable_checkpointing=False,
            precision=cast("_PRECISION_INPUT", cfg.eval_settings()[0]),  # one of Lightning's flags (EvalConfig)
            use_distributed_sampler=False,
            **common,
        )
    logger = TensorBoardLogger(
        save_dir=str(Path(cfg.cache_dir) / "tensorboard"), name=name, version=cfg.training_hash()
    )
    return L.Trainer(
        max_epochs=cfg.train.max_epochs,
        precision=cast("_PRECISION_INPUT", cfg.train.precision),  # checked against TRAIN_PRECISIONS
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


def install_item_loader(cfg: RunConfig, model: Any, dm: Any, *, progress: bool = False) -> Any:
    """The model's item loader (:class:`~lightning_modules.contract.ItemLoading`, e.g. a frozen-feature
    cache) on the DataModule, if it has one, with the model's transform; a feature cache stores the
    run's storage dtype and extracts in a Lightning ``predict`` loop on the run's hardware
    (:mod:`benchmark.extraction`)."""
    loader = model.item_loader(Path(cfg.cache_dir) / "features") if isinstance(model, ItemLoading) else None
    if loader is not None and hasattr(loader, "configure"):
        precision, storage = cfg.eval_settings()
        t = cfg.train
        loader.configure(
            dtype=getattr(torch, storage),
            memmap_min_bytes=int(cfg.eval.memmap_min_mb * 2**20),
            extractor=LightningExtractor(
                t.accelerator, t.devices, t.num_nodes, t.strategy, precision, extraction_workers(cfg, dm), progress
            ),
        )
    dm.set_transform(model.image_transform())
    dm.set_item_loader(loader)
    return loader


def extraction_workers(cfg: RunConfig, dm: Any) -> int:
    """DataLoader workers of the feature extraction: ``data.num_workers``, auto resolved for the
    dataset with one process per device of the node (datamodules/loading.py)."""
    runtime = LoaderRuntime(processes_per_node=cfg.train.devices)
    return resolve_workers(cfg.data.num_workers, dm.parallel_loading, runtime)


def fit_and_save(cfg: RunConfig, model: Any, dm: Any, ckpt: Path, *, progress: bool) -> L.Trainer:
    """Train ``model`` (resuming an interrupted run of the same training from its resume point)
    and save it atomically as the cached checkpoint ``ckpt``; the resume point is then removed."""
    if isinstance(model, CrossRankNegatives):  # contrastive negatives from every DDP process (or not)
        model.gather_negatives = cfg.train.gather_negatives
    if cfg.train.grad_checkpointing:  # activation checkpointing of the trained layers (the model's seam)
        enable_grad_checkpointing(model, cfg.model, error=ConfigError)
    for split in ("train", "val"):  # frozen features extracted (once, if not cached) before the fit loop starts
        dm.item_table(split)
    resume = resume_dir(cfg.cache_dir, ckpt)
    fitter = trainer(
        cfg,
        fit=True,
        progress=progress,
        name=f"{cfg.model}__{cfg.dataset}",
        callbacks=[ResumePoint(resume, cfg.train.checkpoint_every_n_steps)],
    )
    dm.set_runtime(LoaderRuntime.of_trainer(fitter))  # pinned memory on a GPU, auto workers per process
    start = resume_from(resume, cfg.train.resume)
    if start and fitter.is_global_zero:
        print(f"resuming the training of {cfg.model} from {start}", file=sys.stderr, flush=True)
    fitter.fit(model, datamodule=dm, ckpt_path=start)
    if fitter.is_global_zero:
        save_atomically(model, ckpt)
        shutil.rmtree(resume, ignore_errors=True)
    fitter.strategy.barrier("checkpoint-saved")
    return fitter


def create_fit_save(
    cfg: RunConfig, model_cls: Any, model_config: Any, dm: Any, ckpt: Path, *, progress: bool = False
) -> tuple[Any, Any]:
    """``(model, item loader)``: a new model of ``model_config`` (on the prepared DataModule's
    vocabulary), its item loader installed, trained and saved as ``ckpt``."""
    model = create_model(model_cls, model_config, cfg.train.optim, dm.vocabulary_texts())
    loader = install_item_loader(cfg, model, dm, progress=progress)
    fit_and_save(cfg, model, dm, ckpt, progress=progress)
    return model, loader
