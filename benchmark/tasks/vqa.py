"""``--task vqa``: visual question answering, exact-match accuracy per question type beside the
majority-answer baseline of that type.

Questions (:mod:`datamodules.qa`): synthetic -- generated from the scene graphs (colour,
count, position, presence), train / test from the synthetic splits; rsicap -- RSIEval's QA
pairs (evaluation only). The model (:mod:`lightning_modules.vqa`) puts the retrieval
model's query outputs, projected, before a frozen causal LM; it is trained and cached by
:mod:`benchmark.tasks.vqa_training`. The majority baseline of a type is the most frequent
training answer of that type; RSIEval has no training pairs, so there it is the most
frequent answer among the evaluated pairs themselves (an upper bound of any constant
answer; recorded as ``majority_reference``). ``task_args``: :class:`~lightning_modules.vqa.VqaOptions`.
"""

from __future__ import annotations

import time

from benchmark.config import ConfigError, to_dict
from benchmark.metrics.vqa import majority_answers, vqa_scores
from benchmark.registry import MODELS
from benchmark.tasks.base import TaskContext, TaskEvaluation
from benchmark.tasks.vqa_training import answer_questions, ensure_vqa_model, vqa_options
from benchmark.text_table import text_table
from benchmark.threads import torch_threads
from datamodules.qa import QA_SOURCES
from lightning_modules.contract import VqaPrefix


def vqa_table(rows: list[dict]) -> list[str]:
    """The per-type table ``bench run --task vqa`` prints."""
    body = [[r["type"], r["n"], r["accuracy"], r["majority_accuracy"], r["majority_answer"]] for r in rows]
    return text_table(["type", "n", "accuracy", "majority", "majority answer"], body).splitlines()


class VqaTask:
    measures_cost = False

    def check(self, cfg) -> None:
        if cfg.dataset not in QA_SOURCES:
            raise ConfigError(
                f"task vqa: dataset {cfg.dataset!r} has no question-answer pairs "
                f"(datasets with QA: {', '.join(sorted(QA_SOURCES))})"
            )
        if not issubclass(MODELS.get(cfg.model), VqaPrefix):
            raise ConfigError(
                f"task vqa: model {cfg.model!r} has no query outputs to feed a language model "
                "(the BLIP2 family has: ours, blip2)"
            )
        if cfg.size == "tiny" and not QA_SOURCES[cfg.dataset].trains:
            raise ConfigError(
                f"task vqa: {cfg.dataset}'s QA pairs are for evaluation only (no training questions "
                "for a tiny model): evaluate a full-size model (--size full, task_args.lm)"
            )
        vqa_options(cfg)

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation:
        cfg = ctx.cfg
        options = vqa_options(cfg)
        qa = QA_SOURCES[cfg.dataset].read(ctx.dm, cfg.seed)
        with torch_threads(options.threads):
            model, provenance = ensure_vqa_model(cfg, ctx.model, ctx.checkpoint, qa, progress=ctx.progress)
            t = time.perf_counter()
            predictions = answer_questions(model, qa.test, qa.test_items, options.batch_size)
        timings = provenance.pop("timings", {}) | {"vqa_answer_s": time.perf_counter() - t}
        reference = qa.train if qa.train is not None else qa.test
        majority = majority_answers(reference)
        metrics, rows, correct = vqa_scores(qa.test, predictions, majority)
        return TaskEvaluation(
            metrics=metrics,
            per_query={
                "vqa/type": [q.type for q in qa.test],
                "vqa/correct": [int(c) for c in correct],
                "vqa/prediction": predictions,
                "vqa/answer": [q.answer for q in qa.test],
            },
            provenance=qa.provenance | {"n_questions": len(qa.test), "vqa_model": provenance},
            timings=timings,
            extra={
                "vqa": {
                    "per_type": rows,
                    "majority_reference": "train answers"
                    if qa.train is not None
                    else "evaluated answers (no training pairs)",
                    "options": to_dict(options),
                }
            },
        )

    def summary(self, result: dict) -> list[str]:
        m = result["metrics"]
        return [
            *vqa_table(result["vqa"]["per_type"]),
            f"vqa/accuracy={m['vqa/accuracy']:.4f}  vqa/majority_accuracy={m['vqa/majority_accuracy']:.4f}",
        ]
