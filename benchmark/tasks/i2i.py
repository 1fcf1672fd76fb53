"""``--task i2i``: image-to-image retrieval, a reference image against the gallery.

The queries and their relevance come from the dataset's query protocol
(:mod:`datamodules.i2i`): the gallery itself with the dataset's relevance (synthetic scene
graphs, MedPix cases), or seeded augmented views of each image with the original as the
one relevant item (COCO, RSICap). Metrics: ``i2i/R@1``, ``R@5``, ``R@10``, ``MRR`` and the
standard keys of :mod:`benchmark.metrics.retrieval`, scored with the model's own ``score``.
``task_args``: :class:`~datamodules.i2i.ViewOptions` (``crop``, ``flip``).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from benchmark.config import from_dict
from benchmark.tasks.base import TaskContext, TaskEvaluation
from benchmark.tasks.retrieval import jsonable, retrieval_summary, run_evaluator
from datamodules.i2i import ViewOptions, i2i_eval_set


class ImageToImageTask:
    measures_cost = False  # the retrieval run measures the model's cost
    Options = ViewOptions

    def check(self, cfg) -> None:
        from_dict(ViewOptions, cfg.task_args, "task_args")

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation:
        options = from_dict(ViewOptions, ctx.cfg.task_args, "task_args")
        protocol = ctx.dm.i2i_queries
        eval_set = i2i_eval_set(ctx.dm.eval_set(), protocol, ctx.cfg.seed, options)
        modalities = ("image",) if eval_set.i2i_views is None else ("image", "query_image")
        evaluator = run_evaluator(
            ctx, eval_set, replace(ctx.cfg.eval, directions=("i2i",)), ctx.dm.i2i_dataloaders(eval_set), modalities
        )
        rel = eval_set.relevance["i2i"]
        described = {"protocol": protocol, "n_queries": rel.n_queries, "n_gallery": rel.n_gallery}
        if eval_set.i2i_views is not None:
            described |= {"views": asdict(options), "view_seed": ctx.cfg.seed}
        return TaskEvaluation(
            metrics=evaluator.results,
            per_query={k: jsonable(v) for k, v in evaluator.per_query.items()},
            provenance=eval_set.provenance() | {"i2i": described},
            timings=dict(evaluator.timings),
            eval_set=eval_set,
        )

    def summary(self, result: dict) -> list[str]:
        return retrieval_summary(result)
