"""``--task retrieval`` (the default): the three retrieval directions of the evaluated split
(t2i instruction -> image, i2t image -> caption, i2i with the dataset's own relevance)."""

from __future__ import annotations

import numpy as np

from benchmark.config import ConfigError
from benchmark.tasks.base import TaskContext, TaskEvaluation

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


def run_evaluator(ctx: TaskContext, eval_set, eval_config, dataloaders, modalities=("image", "text")):
    """``Trainer.test`` of a :class:`~benchmark.evaluation.RetrievalEvaluator`; the evaluator."""
    from benchmark.evaluation import RetrievalEvaluator

    evaluator = RetrievalEvaluator(ctx.model, eval_set, eval_config, modalities=modalities)
    ctx.tester.test(evaluator, dataloaders=dataloaders, verbose=False)
    return evaluator


class RetrievalTask:
    measures_cost = True

    def check(self, cfg) -> None:
        if cfg.task_args:
            raise ConfigError(f"task retrieval takes no task_args, got {sorted(cfg.task_args)}")

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation:
        from benchmark.metrics.qlen import qlen_metrics

        eval_set = ctx.dm.eval_set()
        evaluator = run_evaluator(ctx, eval_set, ctx.cfg.eval, ctx.dm.test_dataloader())
        lengths = evaluator.per_query.get("text_lengths", np.zeros(0))
        return TaskEvaluation(
            metrics=evaluator.results | qlen_metrics(lengths, eval_set.complexity),
            per_query={k: jsonable(v) for k, v in evaluator.per_query.items()}
            | {"complexity": eval_set.complexity.tolist()},
            provenance=eval_set.provenance(),
            timings=dict(evaluator.timings),
            eval_set=eval_set,
        )

    def summary(self, result: dict) -> list[str]:
        return retrieval_summary(result)
