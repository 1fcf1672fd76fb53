"""``--task retrieval`` (the default): the three retrieval directions of the evaluated split
(t2i instruction -> image, i2t image -> caption, i2i with the dataset's own relevance)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from benchmark.config import ConfigError
from benchmark.evaluation import RetrievalEvaluator
from benchmark.metrics.qlen import qlen_metrics
from benchmark.metrics.spill import SpillConfig
from benchmark.tasks.base import TaskContext, TaskEvaluation
from lightning_modules.contract import ItemExtra

HEADLINE = ("R@1", "R@5", "R@10", "MRR", "Sim")


def jsonable(a) -> list:
    """A per-query array as a JSON list (non-finite floats -> null)."""
    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        return [None if not np.isfinite(x) else round(float(x), 6) for x in arr]
    return arr.tolist()


def retrieval_summary(result: dict) -> list[str]:
    m = result["metrics"]
    keys = [k for k in m if k.split("/")[-1] in HEADLINE]
    return ["  ".join(f"{k}={m[k]:.4f}" for k in keys if m[k] is not None)]


def evaluated_directions(eval_set, requested: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(evaluated, skipped)``: a requested direction in which no query has a relevant item
    (e.g. ``i2i`` on a dataset that defines no image-image relevance) is skipped, not scored."""
    evaluated = tuple(d for d in requested if len(eval_set.relevance[d].indices) > 0)
    skipped = tuple(d for d in requested if d not in evaluated)
    if not evaluated:
        raise ConfigError(
            f"eval.directions {list(requested)}: the evaluated split defines no relevant item in any of them"
        )
    if skipped:
        print(f"skipped direction(s) {', '.join(skipped)}: the dataset defines no relevance there", file=sys.stderr)
    return evaluated, skipped


def run_evaluator(ctx: TaskContext, eval_set, eval_config, dataloaders, modalities=("image", "text")):
    """``Trainer.test`` of a :class:`~benchmark.evaluation.RetrievalEvaluator` in the run's storage
    dtype, the gallery's cached item table (the model's ``item_extra``, e.g. vision tokens)
    given whole rather than gathered, per-item fields above ``eval.memmap_min_mb`` kept on disk in
    the cache's ``eval-spill/``; the evaluator (``skipped_directions`` set)."""
    directions, skipped = evaluated_directions(eval_set, tuple(eval_config.directions))
    key = ctx.model.item_extra if isinstance(ctx.model, ItemExtra) else None
    table = ctx.dm.item_table(eval_set.split) if key else None
    evaluator = RetrievalEvaluator(
        ctx.model,
        eval_set,
        eval_config,
        modalities=modalities,
        directions=directions,
        storage_dtype=getattr(torch, ctx.cfg.eval_settings()[1]),
        gallery_extra={key: table} if key and table is not None else None,
        spill=SpillConfig(Path(ctx.cfg.cache_dir) / "eval-spill", int(ctx.cfg.eval.memmap_min_mb * 2**20)),
    )
    ctx.tester.test(evaluator, dataloaders=dataloaders, verbose=False)
    evaluator.skipped_directions = skipped
    return evaluator


class RetrievalTask:
    measures_cost = True

    def check(self, cfg) -> None:
        if cfg.task_args:
            raise ConfigError(f"task retrieval takes no task_args, got {sorted(cfg.task_args)}")

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation:
        eval_set = ctx.dm.eval_set()
        evaluator = run_evaluator(ctx, eval_set, ctx.cfg.eval, ctx.dm.test_dataloader())
        lengths = evaluator.per_query.get("text_lengths", np.zeros(0))
        return TaskEvaluation(
            metrics=evaluator.results | qlen_metrics(lengths, eval_set.complexity),
            per_query={k: jsonable(v) for k, v in evaluator.per_query.items()}
            | {"complexity": eval_set.complexity.tolist()},
            provenance=eval_set.provenance()
            | ({"skipped_directions": list(evaluator.skipped_directions)} if evaluator.skipped_directions else {}),
            timings=dict(evaluator.timings),
            eval_set=eval_set,
        )

    def summary(self, result: dict) -> list[str]:
        return retrieval_summary(result)
