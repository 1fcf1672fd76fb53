"""Model and gallery of a server, through the suite's own machinery (no second orchestration).

The model is the one ``bench run`` and ``bench feedback`` use for the same flags
(:func:`benchmark.feedback.session.load_model`: the cached checkpoint of the run config,
trained now through :func:`benchmark.store.ensure_checkpoint` if absent; with
``train.max_epochs = 0`` the model as configured) or the folder given with ``--checkpoint``.
With ``--no-train`` an absent checkpoint is a :class:`~benchmark.config.ConfigError` naming the
command that trains it. The evaluated split's gallery is encoded once
(:func:`benchmark.feedback.gallery_encoding.gallery_batches`, the model's item loader included)
into its encoding cache on disk (:mod:`.encoding_cache`), which is mapped: a gallery below
``eval.memmap_min_mb`` goes to the device whole, a larger one stays mapped on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmark.config import ConfigError, RunConfig, to_dict
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.gallery_encoding import gallery_batches
from benchmark.feedback.gallery_file import place
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.refine import Refiner
from benchmark.feedback.session import load_model, run_device
from benchmark.preflight import load_cached_checkpoint
from benchmark.registry import DATASETS, MODELS
from benchmark.serve import encoding_cache as ec
from benchmark.serve.config import ServeConfig
from benchmark.serve.engine import Searcher
from benchmark.serve.gallery import gallery_of
from benchmark.serve.llm_steps import LLMSteps
from benchmark.serve.thumbnails import Thumbnails
from benchmark.store import data_root, ensure_checkpoint


@dataclass(frozen=True)
class Loaded:
    """Everything a ready server answers from."""

    searcher: Searcher
    thumbnails: Thumbnails
    info: dict[str, Any]


def _model_and_data(cfg: RunConfig, sc: ServeConfig, progress: bool):
    if cfg.checkpoint:
        model = load_cached_checkpoint(MODELS.get(cfg.model), Path(cfg.checkpoint), given=True)
        dm = DATASETS.get(cfg.dataset)(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
        dm.prepare_data()
        return model, dm, str(cfg.checkpoint)
    if cfg.train.max_epochs > 0 and not sc.train:
        try:
            ensure_checkpoint(cfg, train=False)
        except ConfigError as e:
            raise ConfigError(f"{e}; or start `bench serve` without --no-train to train it now") from None
    model, dm, provenance = load_model(cfg, progress=progress)
    return model, dm, provenance["checkpoint"]


def load(cfg: RunConfig, fb: FeedbackConfig, sc: ServeConfig, *, progress: bool = False) -> Loaded:
    """The model, the encoded gallery (from the disk cache when there) and the question writer."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    backend = make_backend(fb.llm)  # a bad --llm fails before any work
    t = time.perf_counter()
    model, dm, checkpoint = _model_and_data(cfg, sc, progress)
    device = run_device(cfg)
    model = model.to(device).eval()
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    es = dm.eval_set()
    records = dm.records(dm.config.eval_split)
    key = ec.cache_key(
        cfg.model,
        ec.checkpoint_identity(checkpoint) | {"model_args": to_dict(cfg.model_args), "size": cfg.size},
        ec.split_identity(es.image_ids, es.provenance(), dm.content_identity()),
    )
    path = ec.cache_path(cfg.cache_dir, cfg.model, cfg.dataset, key)
    encoded, encoded_now = ec.load_or_encode(
        path, lambda: gallery_batches(model, dm, device, cfg.cache_dir), es.n_images
    )
    on_device = place(encoded, device, int(cfg.eval.memmap_min_mb * 2**20))  # a larger gallery stays mapped
    gallery = gallery_of(es, records, dm.root, on_device, gallery_caption=fb.gallery_caption)
    encode_s = time.perf_counter() - t
    searcher = Searcher(
        model, gallery, fb, LLMSteps(Refiner(backend, fb.llm)), top_k=sc.top_k, max_searches=sc.max_searches
    )
    info = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "split": es.split,
        "n_images": len(gallery),
        "checkpoint": checkpoint,
        "gallery_cache": str(path),
        "gallery_encoded_now": encoded_now,
        "question_writer": backend.describe()["label"],
        "device": device,
        "load_model_s": round(load_s, 3),
        "gallery_s": round(encode_s, 3),
    }
    return Loaded(searcher, Thumbnails(gallery, sc.thumbnail_px), info)
