"""The result file of ``bench feedback``: ``results/feedback__<model>__<dataset>__<tag>.json``.

Strict JSON, written atomically (``benchmark.results.atomic_write_json``), with the fields
every result file has (schema, model, dataset, size, tag, config, config_hash, seed,
metrics, environment, provenance, timings) plus ``"task": "feedback"`` and:

* ``protocol`` -- T (``rounds``), ``display``, ``ks``, ``success_k``, ``rank_base`` (1),
  ``direction`` (t2i), the arms, the question writer (``llm``: spec, label, ``is_llm``;
  the rules backend says "not an LLM"), the simulated user (``user``: ``model`` -- ``graded``
  or ``binary`` --, ground truth, seed, unsure rate; for ``graded`` also ``closeness``,
  ``ps_threshold``, ``ns_threshold`` and ``noise``), the feedback
  config, the resolved image-image similarity settings (``image_similarity``: what the
  refresh kernel reads -- ``rows`` or ``neighbours`` --, ``top_k``, ``row_chunk``,
  ``row_cache_mb``), query and gallery counts;
* ``per_round`` -- ``{arm: {"round": [0..T], "Hits@K": [...], "R@K": [...], "MRR": [...],
  "median_rank": [...], "mean_rank": [...], "BRI": [...]}}``: one list entry per round,
  ready to plot (x = ``round``);
* ``summary`` -- ``{arm: {rounds_to_success_mean, rounds_to_success_median, never_found,
  success_k, n_queries, n_skipped}}``;
* ``fallbacks`` -- LLM rounds attempted and fallbacks to score refreshing by reason;
* ``user_marks`` -- ``{arm: {"ps", "ns", "unsure", "match"}}``: how many shown items the
  user marked each way over all queries and rounds (``match``: relevant);
* ``metrics`` -- the same numbers flat: ``"<arm>/round<t>/<metric>"`` and ``"<arm>/<summary key>"``;
* ``per_query`` -- ``{arm: [[rank of each query] for each round]}`` (1-based; 0 = no
  relevant item) for bootstrap intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, from_dict, stable_hash, to_dict
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


def redacted_feedback_config(fb: FeedbackConfig) -> dict[str, Any]:
    """The feedback config as a result file records it: credentials in the LLM's base URL redacted."""
    return redact_tree(to_dict(fb))


def result_hash(cfg: RunConfig, fb: FeedbackConfig) -> str:
    """The run config's hash with the feedback config's (as recorded: no credentials), less
    ``similarity`` and ``llm.max_reply_bytes``: those options change how the image-image
    similarities are computed or how much of a reply is read, not what they are, so a run that
    only sets them has the hash of the same run without them (and of runs from before they
    existed). A ``binary`` user hashes as the user did before the user models existed (its
    ``unsure_rate`` alone; the graded settings do not apply to it), so binary runs keep the
    hash of the same runs made then."""
    d = {k: v for k, v in redacted_feedback_config(fb).items() if k != "similarity"}
    d["llm"] = {k: v for k, v in d["llm"].items() if k != "max_reply_bytes"}
    if fb.user.model == "binary":
        d["user"] = {"unsure_rate": fb.user.unsure_rate}
    return stable_hash([cfg.config_hash(), d])


def recorded_feedback_config(data: dict[str, Any]) -> FeedbackConfig:
    """The feedback config a result file records (``protocol.feedback_config``). A file
    without ``user.model`` is from before the user models: its user was the binary one."""
    data = dict(data)
    user = dict(data.get("user") or {})
    user.setdefault("model", "binary")
    return from_dict(FeedbackConfig, data | {"user": user}, "feedback")


def flat_metrics(per_round: dict[str, dict[str, list]], summary: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, table in per_round.items():
        for key, values in table.items():
            if key != "round":
                out.update({f"{arm}/round{t}/{key}": v for t, v in zip(table["round"], values, strict=True)})
        out.update({f"{arm}/{k}": v for k, v in summary[arm].items()})
    return out


def user_protocol(fb: FeedbackConfig, task: FeedbackTask, user_seed: int) -> dict[str, Any]:
    """The simulated user as the result file records it: its model (``graded`` or
    ``binary``), ground truth, seed, unsure rate and, for ``graded``, the closeness used and
    the thresholds and noise."""
    out: dict[str, Any] = fb.user.describe() | {"ground_truth": task.truth_kind, "seed": user_seed}
    if fb.user.model == "graded" and task.closeness is not None:
        out["closeness"] = task.closeness.kind
    return out


def build_result(
    cfg: RunConfig,
    fb: FeedbackConfig,
    res: ProtocolResult,
    task: FeedbackTask,
    *,
    llm: dict[str, Any] | None,
    user_seed: int,
    environment: dict,
    provenance: dict,
    timings: dict[str, float],
    transcript: Path,
) -> dict[str, Any]:
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
            "rounds": fb.rounds,
            "display": fb.display,
            "ks": list(fb.ks),
            "success_k": fb.success_k,
            "rank_base": RANK_BASE,
            "direction": "t2i",
            "arms": list(fb.arms),
            "llm": llm,
            "user": user_protocol(fb, task, user_seed),
            "feedback_config": redacted_feedback_config(fb),
            "image_similarity": fb.image_similarity(),
            "n_queries": task.n_queries,
            "n_gallery": task.n_gallery,
        },
        "per_round": per_round,
        "summary": summary,
        "fallbacks": {"llm_rounds": int(res.counts.get("llm_rounds", 0)), "by_reason": res.fallbacks()},
        "user_marks": res.marks(),
        "metrics": flat_metrics(per_round, summary),
        "per_query": {a: r.tolist() for a, r in res.ranks.items()},
        "environment": environment,
        "provenance": provenance | {"n_queries": task.n_queries, "transcript": str(transcript)},
        "timings": timings,
    }
