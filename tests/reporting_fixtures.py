"""Result files for the reporting tests, written through the real writer.

The config is a real :class:`~benchmark.config.RunConfig` (``build_run_config``), the
metrics are computed from the per-query ranks and similarities by the suite's own metric
code (``flatten_metrics``, ``qlen_metrics``), and the file is written with
``atomic_write_json``, so the reports read exactly what ``bench run`` writes. Per-query
arrays are drawn from seeded generators by the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.config import build_run_config, to_dict
from benchmark.metrics.qlen import qlen_metrics
from benchmark.metrics.retrieval import DirectionResult, flatten_metrics
from benchmark.results import SCHEMA_VERSION, atomic_write_json

N_GALLERY = 80
ENV = {"device": "cpu", "cuda_device_name": None, "processor": "x86_64", "cpu_count": 2, "torch_num_threads": 2}


def ranks_with_hit_rate(rng: np.random.Generator, n: int, hit: float) -> np.ndarray:
    """Ranks in [1, N_GALLERY] whose share of ranks <= 5 is about ``hit``."""
    good = rng.random(n) < hit
    return np.where(good, rng.integers(1, 6, n), rng.integers(6, N_GALLERY + 1, n)).astype(np.int64)


def write_result(
    results_dir: Path,
    *,
    model: str,
    ranks: np.ndarray,
    sims: np.ndarray,
    tag: str = "default",
    dataset: str = "synthetic",
    size: str = "tiny",
    seed: int = 0,
    lengths: np.ndarray | None = None,
    complexity: np.ndarray | None = None,
    model_args: dict | None = None,
    model_config: dict | None = None,
    extra_metrics: dict | None = None,
    annotations: str = "a" * 64,
    environment: dict | None = None,
    file_tag: str | None = None,
    epochs: int | None = None,
    dependencies: dict | None = None,
) -> Path:
    ranks, sims = np.asarray(ranks, dtype=np.int64), np.asarray(sims, dtype=np.float64)
    n = ranks.size
    complexity = np.asarray(complexity if complexity is not None else np.arange(n) % 5 + 1, dtype=np.int64)
    cfg = build_run_config(
        {
            "model": model,
            "dataset": dataset,
            "size": size,
            "tag": "default",
            "seed": seed,
            "results_dir": str(results_dir),
            "model_args": model_args or {},
            "data": {"options": {"n_test": n // 5}},
            **({"train": {"max_epochs": epochs}} if epochs is not None else {}),
        }
    )
    config = to_dict(cfg) | {"tag": tag}
    metrics = flatten_metrics({"t2i": DirectionResult(ranks, sims, N_GALLERY)})
    text_lengths = np.full(n, -1) if lengths is None else np.asarray(lengths)
    metrics |= qlen_metrics(text_lengths, complexity)
    metrics |= extra_metrics or {}
    result = {
        "schema": SCHEMA_VERSION,
        "model": model,
        "dataset": dataset,
        "size": size,
        "tag": tag,
        "task": "retrieval",
        "seed": seed,
        "config": config,
        "config_hash": cfg.config_hash(),
        "metrics": metrics,
        "per_query": {
            "t2i/rank": ranks.tolist(),
            "t2i/sim": [round(float(s), 6) for s in sims],
            "text_lengths": text_lengths.tolist(),
            "complexity": complexity.tolist(),
        },
        "environment": environment or dict(ENV),
        "provenance": {
            "split": "test",
            "n_gallery_images": N_GALLERY,
            "n_queries": n,
            "annotations_sha256": annotations,
            "complexity_levels": sorted(set(complexity.tolist())),
            **({"dependencies": dependencies} if dependencies is not None else {}),
        },
        "data": {"skipped": []},
        "timings": {"total_s": 1.0},
    }
    if model_config is not None:
        result["model_config"] = model_config
    path = Path(results_dir) / f"{model}__{dataset}__{file_tag or tag}.json"
    atomic_write_json(path, result)
    return path


def write_feedback_result(
    results_dir: Path,
    *,
    tag: str = "default",
    model: str = "clip",
    rounds: int = 3,
    display: int = 3,
    arms: tuple[str, ...] = ("none", "exclude", "refresh", "llm"),
    n_scenes: int = 24,
    backend=None,
    user: str = "graded",
) -> Path:
    """A ``bench feedback`` result file from the real protocol (tiny SynthScenes split, the fake
    attribute-vector model of ``tests.feedback_helpers``, the rules writer unless ``backend``
    is given, the simulated user model ``user``), written by the real record builder."""
    from benchmark.config import from_dict
    from benchmark.feedback.config import FeedbackConfig
    from benchmark.feedback.llm.rules import RulesBackend
    from benchmark.feedback.protocol import run_protocol
    from benchmark.feedback.record import build_result
    from benchmark.feedback.refine import Refiner
    from benchmark.feedback.similarity import GalleryScorer
    from benchmark.feedback.user import SimulatedUser
    from tests.feedback_helpers import FakeModel, tiny_task

    task, gallery = tiny_task(n_scenes)
    fb = from_dict(
        FeedbackConfig, {"rounds": rounds, "display": display, "arms": list(arms), "user": {"model": user}}, "feedback"
    )
    model_obj = FakeModel()
    scorer = GalleryScorer(model_obj, gallery, model_obj.score)
    backend = backend or RulesBackend()
    res = run_protocol(
        task,
        scorer,
        scorer.encode_texts(task.queries),
        fb,
        SimulatedUser.from_config(task.truths, task.closeness, fb.user, 0),
        Refiner(backend, fb.llm),
    )
    cfg = build_run_config(
        {
            "model": model,
            "dataset": "synthetic",
            "size": "tiny",
            "tag": "default",
            "seed": 0,
            "results_dir": str(results_dir),
        }
    )
    result = build_result(
        cfg,
        fb,
        res,
        task,
        llm=backend.describe() if "llm" in arms else None,
        user_seed=0,
        environment=dict(ENV),
        provenance={"split": "test"},
        timings={"total_s": 1.0},
        transcript=Path(results_dir) / "t.jsonl",
    )
    result["tag"] = tag
    path = Path(results_dir) / f"feedback__{model}__synthetic__{tag}.json"
    atomic_write_json(path, result)
    return path


def write_speed_result(
    results_dir: Path,
    *,
    rounds: list[tuple[float, float]],
    model: str = "ours",
    baseline: str = "blip2",
    tag: str = "default",
) -> Path:
    """A ``--task speed`` result file: the task's own metrics and record of the given per-round
    items/s of (model, baseline)."""
    from benchmark.measure.paired import PairedThroughput
    from benchmark.tasks.speed import speed_metrics

    paired = PairedThroughput((model, baseline), tuple(rounds), 32, 5, 2, 2, "cpu")
    cfg = build_run_config(
        {
            "model": model,
            "dataset": "synthetic",
            "size": "tiny",
            "tag": tag,
            "seed": 0,
            "task": "speed",
            "task_args": {"baseline": baseline},
            "results_dir": str(results_dir),
        }
    )
    result = {
        "schema": SCHEMA_VERSION,
        "model": model,
        "dataset": "synthetic",
        "size": "tiny",
        "tag": tag,
        "task": "speed",
        "seed": 0,
        "config": to_dict(cfg),
        "config_hash": cfg.config_hash(),
        "metrics": speed_metrics(paired),
        "per_query": {},
        "environment": dict(ENV),
        "provenance": {"split": "test"},
        "data": {"skipped": []},
        "timings": {"total_s": 1.0},
        "speed": paired.to_dict() | {"baseline": baseline},
    }
    path = cfg.result_path()
    atomic_write_json(path, result)
    return path


class DownBackend:
    """A question writer whose server is down: every round fails as ``unreachable``, so the
    protocol falls back to score refreshing for every query and round."""

    def generate(self, messages) -> str:
        from benchmark.feedback.llm.base import LLMError

        raise LLMError("unreachable", "connection refused (test)")

    def describe(self) -> dict:
        return {"spec": "openai:http://127.0.0.1:9", "label": "openai (test server, down)", "is_llm": True}
