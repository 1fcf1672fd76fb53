"""One ``bench feedback`` run: model and data through the runner's machinery, then the protocol.

The model is the one ``bench run`` evaluates for the same config: at tiny size the cached
checkpoint of its training config (trained and cached now through
:func:`benchmark.store.ensure_checkpoint` if absent, dependencies included); with
``train.max_epochs = 0`` the model as configured (e.g. a pretrained full-size checkpoint).
The gallery of the evaluated split is encoded once
(:func:`~benchmark.feedback.gallery_encoding.encode_gallery`: on disk above
``eval.memmap_min_mb``), the queries once; then
:func:`~benchmark.feedback.protocol.run_protocol` runs every arm, the transcript streams to
``results/feedback__<model>__<dataset>__<tag>.jsonl`` and the result file is written
beside it (:mod:`benchmark.feedback.record`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from benchmark.config import ConfigError, RunConfig, from_dict
from benchmark.environment import environment
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.gallery_encoding import encode_gallery
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.record import build_result, result_paths
from benchmark.feedback.refine import Refiner
from benchmark.feedback.similarity import GalleryScorer, score_function
from benchmark.feedback.task import from_eval_set
from benchmark.feedback.transcript import JsonlWriter
from benchmark.feedback.user import SimulatedUser
from benchmark.portable import portable
from benchmark.preflight import create_model
from benchmark.registry import DATASETS, MODELS
from benchmark.reporting.feedback_stats import describe, feedback_stats
from benchmark.reporting.options import ReportOptions
from benchmark.results import atomic_write_json
from benchmark.store import data_root, ensure_checkpoint, path_roots, pretrained_of, resolve_dependencies


@dataclass
class FeedbackOutcome:
    path: Path
    transcript: Path
    result: dict[str, Any]

    def lines(self) -> list[str]:
        """A short console summary: cumulative Hits@success_k per round and final BRI per arm."""
        r, p = self.result, self.result["protocol"]
        k = p["success_k"]
        out = [
            (
                f"T={p['rounds']} display={p['display']} K={k} ranks {p['rank_base']}-based, "
                f"{p['n_queries']} queries x {p['n_gallery']} images"
            )
        ]
        if p["llm"]:
            out.append(f"question writer: {p['llm']['label']}")
        user = p["user"]
        out.append("simulated user: " + ", ".join(f"{k} {v}" for k, v in user.items()))
        for arm, table in r["per_round"].items():
            hits = " ".join(f"{h:.3f}" for h in table.get(f"Hits@{k}", []))
            out.append(f"  {arm:<8} Hits@{k} by round: {hits}  BRI(T)={table['BRI'][-1]:.3f}")
        out += self.interval_lines()
        if r["fallbacks"]["llm_rounds"]:
            out.append(
                f"question-writer rounds: {r['fallbacks']['llm_rounds']}, fallbacks to refresh: "
                f"{r['fallbacks']['by_reason'] or 'none'}"
            )
        out.append(f"wrote {self.path} and {self.transcript} ({r['timings']['total_s']:.1f} s)")
        return out

    def interval_lines(self, options=None) -> list[str]:
        """Bootstrap intervals of Hits@K and BRI per arm and of each refinement arm minus
        exclude, at round 3 and T (the report's defaults: B = 1000, seed 0)."""
        options = options or ReportOptions()
        ranks = {a: np.asarray(r, dtype=np.int64) for a, r in self.result["per_query"].items()}
        return describe(feedback_stats(ranks, self.result["protocol"]["success_k"], options), options)


def run_device(cfg: RunConfig) -> str:
    return "cuda" if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda") else "cpu"


def load_model(cfg: RunConfig, *, progress: bool = False):
    """``(model, datamodule, provenance)``: the cached or newly trained checkpoint, or the
    model as configured when ``train.max_epochs`` is 0."""
    model_cls = MODELS.get(cfg.model)
    dm = DATASETS.get(cfg.dataset)(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
    if cfg.train.max_epochs > 0:
        ckpt, trained = ensure_checkpoint(cfg, progress=progress)
        dm.prepare_data()
        return model_cls.load_checkpoint(ckpt), dm, {"checkpoint": str(ckpt), "trained_this_run": trained}
    model_config = from_dict(model_cls.Config, cfg.model_args, "model_args")
    pretrained = pretrained_of(model_config)
    if cfg.size == "full" and not pretrained:
        raise ConfigError("size 'full' needs model_args.pretrained: a hub id or a local checkpoint path")
    model_config, _ = resolve_dependencies(cfg, model_cls, model_config, progress=progress)
    dm.prepare_data()
    model = create_model(model_cls, model_config, cfg.train.optim, dm.vocabulary_texts())
    return model, dm, {"checkpoint": pretrained, "trained_this_run": False}


def run_feedback(cfg: RunConfig, fb: FeedbackConfig, *, progress: bool = False) -> FeedbackOutcome:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    backend = make_backend(fb.llm) if "llm" in fb.arms else None  # bad --llm input fails before any work
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    t = time.perf_counter()
    model, dm, provenance = load_model(cfg, progress=progress)
    device = run_device(cfg)
    model = model.to(device).eval()
    timings["load_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gallery = encode_gallery(model, dm, device, cfg.cache_dir, cfg.eval.memmap_min_mb)
    es = dm.eval_set()
    task = from_eval_set(es, dm.records(dm.config.eval_split), gallery_caption=fb.gallery_caption)
    task = task.limited(fb.max_queries)
    sim = fb.image_similarity()
    scorer = GalleryScorer(
        model,
        gallery,
        score_function(model, fb.score_variant),
        batch_size=fb.chunk_size,
        row_chunk=sim["row_chunk"],
        top_k=sim["top_k"],
        row_cache_mb=fb.similarity.row_cache_mb,
    )
    queries = scorer.encode_texts(task.queries)
    timings["encode_s"] = time.perf_counter() - t

    user_seed = cfg.seed if fb.seed is None else fb.seed
    user = SimulatedUser.from_config(task.truths, task.closeness, fb.user, user_seed)
    refiner = Refiner(backend, fb.llm) if backend is not None else None
    path, transcript = result_paths(cfg)
    t = time.perf_counter()
    with JsonlWriter(transcript) as sink:
        res = run_protocol(task, scorer, queries, fb, user, refiner, on_query=sink.write)
    timings["protocol_s"] = time.perf_counter() - t
    timings.update(res.timings)
    timings["total_s"] = time.perf_counter() - t_start

    provenance = (
        es.provenance()
        | dm.describe()
        | provenance
        | {"data_root": dm.config.root, "image_image_rows_computed": scorer.n_image_rows}
    )
    result = build_result(
        cfg,
        fb,
        res,
        task,
        llm=backend.describe() if backend is not None else None,
        user_seed=user_seed,
        environment=environment(device),
        provenance=provenance,
        timings=timings,
        transcript=transcript,
    )
    atomic_write_json(path, portable(result, path_roots(cfg)))  # no machine paths in the file
    return FeedbackOutcome(path, transcript, result)
