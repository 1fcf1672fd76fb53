"""The result file of ``bench feedback``: ``results/feedback__<model>__<dataset>__<tag>.json``.

Strict JSON, written atomically (``benchmark.results.atomic_write_json``), with the fields
every result file has (schema, model, dataset, size, tag, config, config_hash, seed,
metrics, environment, provenance, timings) plus ``"task": "feedback"`` and:

* ``protocol`` -- T (``rounds``), ``display``, ``ks``, ``success_k``, ``rank_base`` (1),
  ``direction`` (t2i), the arms, the question writer (``llm``: spec, label, ``is_llm``;
  the rules backend says "not an LLM"), the user's ground truth and seed, the feedback
  config, the resolved image-image similarity settings (``image_similarity``: what the
  refresh kernel reads -- ``rows`` or ``neighbours`` --, ``top_k``, ``row_chunk``,
  ``row_cache_mb``), query and gallery counts;
* ``per_round`` -- ``{arm: {"round": [0..T], "Hits@K": [...], "R@K": [...], "MRR": [...],
  "median_rank": [...], "mean_rank": [...], "BRI": [...]}}``: one list entry per round,
  ready to plot (x = ``round``);
* ``summary`` -- ``{arm: {rounds_to_success_mean, rounds_to_success_median, never_found,
  success_k, n_queries, n_skipped}}``;
* ``fallbacks`` -- LLM rounds attempted and fallbacks to score refreshing by reason;
* ``metrics`` -- the same numbers flat: ``"<arm>/round<t>/<metric>"`` and ``"<arm>/<summary key>"``;
* ``per_query`` -- ``{arm: [[rank of each query] for each round]}`` (1-based; 0 = no
  relevant item) for bootstrap intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, stable_hash, to_dict
from benchmark.feedback import metrics
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.llm.redact import redact_tree
from benchmark.feedback.protocol import ProtocolResult
from benchmark.feedback.ranking import RANK_BASE
from benchmark.feedback.task import FeedbackTask
from benchmark.results import SCHEMA_VERSION


def result_paths(cfg: RunConfig) -> tuple[Path, Path]:
    """(result JSON, transcript JSON Lines) of a feedback run."""
    stem = Path(cfg.results_dir) / f"feedback__{cfg.model}__{cfg.dataset}__{cfg.tag}"
    return stem.with_suffix(".json"), stem.with_suffix(".jsonl")


def recorded_feedback_config(fb: FeedbackConfig) -> dict[str, Any]:
    """The feedback config as recorded: credentials in the LLM's base URL redacted."""
    return redact_tree(to_dict(fb))


def result_hash(cfg: RunConfig, fb: FeedbackConfig) -> str:
    """The run config's hash with the feedback config's (as recorded: no credentials), less
    ``similarity`` and ``llm.max_reply_bytes``: those options change how the image-image
    similarities are computed or how much of a reply is read, not what they are, so a run that
    only sets them has the hash of the same run without them (and of runs from before they
    existed)."""
    recorded = recorded_feedback_config(fb)
    recorded["llm"] = {k: v for k, v in recorded["llm"].items() if k != "max_reply_bytes"}
    return stable_hash([cfg.config_hash(), {k: v for k, v in recorded.items() if k != "similarity"}])


def flat_metrics(per_round: dict[str, dict[str, list]], summary: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, table in per_round.items():
        for key, values in table.items():
            if key != "round":
                out.update({f"{arm}/round{t}/{key}": v for t, v in zip(table["round"], values, strict=True)})
        out.update({f"{arm}/{k}": v for k, v in summary[arm].items()})
    return out


def build_result(cfg: RunConfig, fb: FeedbackConfig, res: ProtocolResult, task: FeedbackTask, *,
                 llm: dict[str, Any] | None, user_seed: int, environment: dict, provenance: dict,
                 timings: dict[str, float], transcript: Path) -> dict[str, Any]:
    ks = sorted(set(fb.ks) | {fb.success_k})
    per_round = {a: metrics.per_round(r, ks) for a, r in res.ranks.items()}
    summary = {a: metrics.summary(r, fb.success_k) for a, r in res.ranks.items()}
    return {
        "schema": SCHEMA_VERSION,
        "task": "feedback",
        "model": cfg.model,
        "dataset": cfg.dataset,
        "size": cfg.size,
        "tag": cfg.tag,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "config_hash": result_hash(cfg, fb),
        "protocol": {
            "rounds": fb.rounds, "display": fb.display, "ks": list(fb.ks), "success_k": fb.success_k,
            "rank_base": RANK_BASE, "direction": "t2i", "arms": list(fb.arms),
            "llm": llm, "user": {"ground_truth": task.truth_kind, "seed": user_seed,
                                 "unsure_rate": fb.user.unsure_rate},
            "feedback_config": recorded_feedback_config(fb), "image_similarity": fb.image_similarity(),
            "n_queries": task.n_queries, "n_gallery": task.n_gallery,
        },
        "per_round": per_round,
        "summary": summary,
        "fallbacks": {"llm_rounds": int(res.counts.get("llm_rounds", 0)), "by_reason": res.fallbacks()},
        "metrics": flat_metrics(per_round, summary),
        "per_query": {a: r.tolist() for a, r in res.ranks.items()},
        "environment": environment,
        "provenance": provenance | {"n_queries": task.n_queries, "transcript": str(transcript)},
        "timings": timings,
    }
