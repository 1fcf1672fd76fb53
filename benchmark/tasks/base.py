"""The task seam: what the runner gives a task (:class:`TaskContext`) and gets back
(:class:`TaskEvaluation`), and the :class:`Task` protocol every registered task honours."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmark.config import RunConfig


@dataclass
class TaskContext:
    """A trained (or loaded) retrieval model and its data, ready to evaluate.

    tester: a Lightning ``Trainer`` for ``test`` (no logger, no checkpointing).
    checkpoint: the retrieval model's cached checkpoint folder (None when not trained).
    """

    cfg: RunConfig
    model: Any
    dm: Any
    tester: Any
    checkpoint: Path | None
    progress: bool = False


@dataclass
class TaskEvaluation:
    """What a task measured. ``eval_set`` (retrieval tasks) is what cost measurement uses;
    ``extra`` holds further top-level result-file fields (e.g. VQA's per-type table)."""

    metrics: dict[str, float]
    per_query: dict[str, list]
    provenance: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    eval_set: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    #: whether FLOPs / memory / throughput of retrieval are measured after the run
    measures_cost: bool

    def check(self, cfg: RunConfig) -> None:
        """Refuse a config the task cannot run (ConfigError), before anything is trained."""
        ...

    def evaluate(self, ctx: TaskContext) -> TaskEvaluation: ...

    def summary(self, result: dict) -> list[str]:
        """The lines ``bench run`` prints for a result of this task."""
        ...
