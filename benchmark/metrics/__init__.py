"""Retrieval metrics: an exact, chunked functional core and a torchmetrics ``Metric`` over embeddings."""

from benchmark.metrics.metric import EvalStructure, RetrievalMetric
from benchmark.metrics.retrieval import (
    DirectionResult,
    DirectionSpec,
    ScoreFn,
    dense_score_fn,
    encoded_score_fn,
    evaluate_direction,
    evaluate_directions,
    flatten_metrics,
    higher_is_better,
    retrieval_metrics,
    source_relevance,
    summarize,
    transpose_relevance,
)

__all__ = [
    "DirectionResult",
    "DirectionSpec",
    "EvalStructure",
    "RetrievalMetric",
    "ScoreFn",
    "dense_score_fn",
    "encoded_score_fn",
    "evaluate_direction",
    "evaluate_directions",
    "flatten_metrics",
    "higher_is_better",
    "retrieval_metrics",
    "source_relevance",
    "summarize",
    "transpose_relevance",
]
