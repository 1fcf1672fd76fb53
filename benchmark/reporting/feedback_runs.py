"""Feedback result files (``"task": "feedback"``, written by ``bench feedback``) for the reports.

:func:`split_results` separates them from the retrieval runs and validates each one into a
:class:`FeedbackRun` before any report is written, so a malformed file stops the report
with a :class:`~benchmark.results.ResultFileError` that names the file and the field, and
no report file already on disk is touched. What is read: ``protocol`` (``rounds`` T,
``display``, ``success_k`` K, ``rank_base``, ``arms``, ``llm`` -- the question writer's
``label`` and ``is_llm`` --, ``n_gallery``, ``feedback_config.refresh``: the score-refreshing
settings, shown as recorded, ``user``: the simulated user model -- a file without
``user.model`` is from before the user models, when the user was the binary one),
``per_query[arm]`` (ranks ``[T + 1][Q]``, 1-based, 0 = the query has no relevant item),
``summary`` (optional) and ``fallbacks`` (optional: ``llm_rounds``, the query-rounds the
``llm`` arm asked its question writer, and ``by_reason``, those that fell back to score
refreshing; :class:`Fallbacks`). An arm whose rounds all fell back is labelled so (``llm (all
rounds fell back to refresh)``): it is the refresh arm under another name, never shown as an
LLM result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmark.feedback import metrics
from benchmark.results import ResultFileError, object_field

FEEDBACK_TASK = "feedback"
RANK_BASE = 1
#: the arms that ask the question writer (``benchmark.feedback.arms.LLMGuided``); a failed round falls
#: back to the refresh update
LLM_ARMS = ("llm",)
FALLBACK_ARM = "refresh"


@dataclass(frozen=True)
class Fallbacks:
    """The question-writer rounds of one arm: ``rounds`` asked, ``by_reason`` fell back to refresh."""

    rounds: int
    by_reason: dict[str, int]

    @property
    def fell_back(self) -> int:
        return sum(self.by_reason.values())

    @property
    def all_fell_back(self) -> bool:
        return self.rounds > 0 and self.fell_back == self.rounds

    def describe(self) -> str:
        if not self.rounds:
            return "no question-writer rounds"
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.by_reason.items()))
        share = f"{self.fell_back:,} of {self.rounds:,} query-rounds ({self.fell_back / self.rounds:.1%})"
        return f"{share} fell back to {FALLBACK_ARM}" + (f" ({reasons})" if reasons else "")


@dataclass(frozen=True)
class FeedbackRun:
    path: str
    model: str
    dataset: str
    size: str
    tag: str
    rounds: int
    display: int
    success_k: int
    rank_base: int
    writer: str | None  # the question writer's label (None: no llm arm)
    writer_is_llm: bool | None
    ground_truth: str | None
    n_gallery: int | None
    ranks: dict[str, np.ndarray]  # arm -> [T + 1, Q] int64, in the file's arm order
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh: dict[str, Any] = field(default_factory=dict)  # the score-refreshing settings, as recorded
    fallbacks: dict[str, Fallbacks] = field(default_factory=dict)  # LLM arm -> its fallbacks (absent: not recorded)
    user: dict[str, Any] = field(default_factory=lambda: {"model": "binary"})  # the simulated user, as recorded

    @property
    def n_queries(self) -> int:
        return next(iter(self.ranks.values())).shape[1]

    @property
    def name(self) -> str:
        return f"{self.model} / {self.dataset} / {self.size} / {self.tag}"

    @property
    def stem(self) -> str:
        """A file-name-safe stem for the run's figure."""
        raw = f"feedback__{self.model}__{self.dataset}__{self.size}__{self.tag}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)

    def arm_label(self, arm: str) -> str:
        """The arm's name as the tables show it: an LLM arm whose every round fell back says so."""
        fb = self.fallbacks.get(arm)
        return f"{arm} (all rounds fell back to {FALLBACK_ARM})" if fb is not None and fb.all_fell_back else arm

    def fallback_text(self) -> str | None:
        """One sentence on the LLM arms' fallbacks (None: the run has no LLM arm)."""
        llm = [a for a in self.ranks if a in LLM_ARMS]
        if not llm:
            return None
        parts = [
            f"arm {a}: " + (self.fallbacks[a].describe() if a in self.fallbacks else "not recorded in the file")
            for a in llm
        ]
        others = [a for a in self.ranks if a not in LLM_ARMS]
        tail = f"; arms {', '.join(others)} ask no question writer" if others else ""
        return "Question-writer fallbacks: " + "; ".join(parts) + tail

    @property
    def user_model(self) -> str:
        return str(self.user.get("model", "binary"))

    def user_text(self) -> str:
        """The simulated user in words: its model and, for ``graded``, closeness, bands and noise."""
        u = self.user
        if self.user_model != "graded":
            return f"{self.user_model} (PS = relevant, NS = the others)"
        return (
            f"graded ({u.get('closeness', '?')}: PS if closeness >= {u.get('ps_threshold')}, NS if < "
            f"{u.get('ns_threshold')}, unsure between; noise {u.get('noise')}, seed {u.get('seed')})"
        )

    def writer_text(self) -> str:
        if self.writer is None:
            return "none (no llm arm)"
        if self.writer_is_llm is False and "not an llm" not in self.writer.lower():
            return f"{self.writer} (not an LLM)"
        return self.writer


def is_feedback(result: dict) -> bool:
    return result.get("task") == FEEDBACK_TASK


def _field(result: dict, dotted: str) -> Any:
    node: Any = result
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ResultFileError(f"{result.get('_path', '<result>')}: missing field {dotted}")
        node = node[part]
    return node


def _positive_int(result: dict, dotted: str) -> int:
    v = _field(result, dotted)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ResultFileError(f"{result.get('_path', '<result>')}: field {dotted} must be an integer >= 1, got {v!r}")
    return v


def _ranks(result: dict, arm: str, rounds: int) -> np.ndarray:
    where = f"{result.get('_path', '<result>')}: field per_query.{arm}"
    rows = _field(result, f"per_query.{arm}")
    if not isinstance(rows, list) or len(rows) != rounds + 1 or not all(isinstance(r, list) for r in rows):
        raise ResultFileError(f"{where} must be {rounds + 1} lists of ranks (rounds 0..{rounds})")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        raise ResultFileError(f"{where}: every round must rank the same queries (lengths {sorted(lengths)})")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for r in rows for x in r):
        raise ResultFileError(f"{where}: ranks must be integers >= 0 (1-based; 0 = no relevant item)")
    ranks = np.asarray(rows, dtype=np.int64)
    try:
        metrics.best_so_far(ranks)
        metrics.bri_by_query(ranks)  # the consistency checks of the metrics themselves
    except ValueError as e:
        raise ResultFileError(f"{where}: {e}") from None
    return ranks


def feedback_run(result: dict) -> FeedbackRun:
    """A validated :class:`FeedbackRun`; a bad field raises ResultFileError naming it."""
    path = str(result.get("_path", "<result>"))
    rounds = _positive_int(result, "protocol.rounds")
    display = _positive_int(result, "protocol.display")
    success_k = _positive_int(result, "protocol.success_k")
    rank_base = _field(result, "protocol.rank_base")
    if rank_base != RANK_BASE:
        raise ResultFileError(
            f"{path}: field protocol.rank_base must be {RANK_BASE} (1-based ranks), got {rank_base!r}"
        )
    arms = _field(result, "protocol.arms")
    if (
        not isinstance(arms, list)
        or not arms
        or not all(isinstance(a, str) for a in arms)
        or len(set(arms)) != len(arms)
    ):
        raise ResultFileError(
            f"{path}: field protocol.arms must be a non-empty list of distinct arm names, got {arms!r}"
        )
    ranks = {a: _ranks(result, a, rounds) for a in arms}
    if len({r.shape for r in ranks.values()}) != 1:
        raise ResultFileError(f"{path}: field per_query: the arms rank different numbers of queries")
    llm = _field(result, "protocol.llm")
    if llm is not None and not (
        isinstance(llm, dict) and isinstance(llm.get("label"), str) and isinstance(llm.get("is_llm"), bool)
    ):
        raise ResultFileError(f"{path}: field protocol.llm must be null or hold a string label and a boolean is_llm")
    summary = object_field(result, "summary")
    user = result["protocol"].get("user") if isinstance(result["protocol"].get("user"), dict) else {}
    n_gallery = result["protocol"].get("n_gallery")
    fb_config = result["protocol"].get("feedback_config")
    refresh = fb_config.get("refresh") if isinstance(fb_config, dict) else None
    settings = (
        {k: v for k, v in refresh.items() if isinstance(v, (int, float, str))} if isinstance(refresh, dict) else {}
    )
    return FeedbackRun(
        path,
        str(result.get("model")),
        str(result.get("dataset")),
        str(result.get("size")),
        str(result.get("tag")),
        rounds,
        display,
        success_k,
        rank_base,
        llm["label"] if llm else None,
        llm["is_llm"] if llm else None,
        user.get("ground_truth") if isinstance(user.get("ground_truth"), str) else None,
        n_gallery if isinstance(n_gallery, int) else None,
        ranks,
        {a: s for a, s in summary.items() if isinstance(s, dict)},
        settings,
        _fallbacks(result, arms),
        {"model": "binary"} | {k: v for k, v in user.items() if isinstance(v, (int, float, str))},
    )


def _fallbacks(result: dict, arms: list[str]) -> dict[str, Fallbacks]:
    """The ``fallbacks`` record, attributed to the run's LLM arm (absent: {})."""
    raw = result.get("fallbacks")
    llm = [a for a in arms if a in LLM_ARMS]
    if raw is None or not llm:
        return {}
    where = f"{result.get('_path', '<result>')}: field fallbacks"
    if not isinstance(raw, dict):
        raise ResultFileError(f"{where} must be an object with llm_rounds and by_reason, got {raw!r}")
    rounds, reasons = raw.get("llm_rounds"), raw.get("by_reason")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ResultFileError(f"{where}.llm_rounds must be an integer >= 0, got {rounds!r}")
    if not isinstance(reasons, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in reasons.items()
    ):
        raise ResultFileError(f"{where}.by_reason must map reasons to counts >= 0, got {reasons!r}")
    if sum(reasons.values()) > rounds:
        raise ResultFileError(f"{where}: {sum(reasons.values())} fallbacks exceed the {rounds} llm rounds")
    return {llm[0]: Fallbacks(rounds, dict(reasons))}


def split_results(results: list[dict]) -> tuple[list[dict], list[FeedbackRun]]:
    """(retrieval runs, validated feedback runs sorted by model, dataset, size, tag)."""
    runs = [feedback_run(r) for r in results if is_feedback(r)]
    runs.sort(key=lambda r: (r.model, r.dataset, r.size, r.tag))
    return [r for r in results if not is_feedback(r)], runs
