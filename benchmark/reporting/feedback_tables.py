"""The per-round tables of a feedback run (format-free :class:`Table` s) and its protocol line.

Per run: cumulative Hits@K by round (one row per arm, columns rounds 0..T, intervals),
BRI by round (lower is better), and, when the ``exclude`` arm was run, the paired
differences of each refinement arm minus exclude (Hits@K and BRI by round, with the
p-values of rounds 3 and T in the notes), then rounds to success and the share never
found per arm (from the file's ``summary``). Every table states the protocol: K, T, display
size, rank base, the question writer (``rules`` labelled as not an LLM) and the LLM arm's
fallbacks to refresh; an arm whose rounds all fell back is labelled so in every row.
"""

from __future__ import annotations

from benchmark.reporting.estimates import HIGHER, LOWER, Cell
from benchmark.reporting.feedback_runs import FeedbackRun
from benchmark.reporting.feedback_stats import FeedbackStats, report_rounds
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.table_model import Column, Row, Table


def protocol_line(run: FeedbackRun) -> str:
    gallery = f" x {run.n_gallery} images" if run.n_gallery else ""
    truth = f"; simulated user: {run.user_text()}"
    truth += f"; simulated user's ground truth: {run.ground_truth}" if run.ground_truth else ""
    if run.refresh and "refresh" in run.ranks:
        truth += "; score refreshing: " + ", ".join(f"{k} = {v}" for k, v in sorted(run.refresh.items()))
    return (
        f"Protocol: K = {run.success_k} (cumulative Hits@K: best rank so far <= K), T = {run.rounds} "
        f"feedback rounds (rankings 0..T), display {run.display} items per round, ranks {run.rank_base}-based; "
        f"question writer: {run.writer_text()}{truth}; {run.n_queries} queries{gallery}; "
        f"BRI: PlugIR's best-log-rank integral over the first t rounds (lower is better)."
        + (f" {run.fallback_text()}." if run.fallback_text() else "")
    )


def _round_columns(rounds: int, better: str | None, fmt: str) -> tuple[Column, ...]:
    return tuple(Column(f"r{t}", f"round {t}", better, fmt) for t in range(rounds + 1))


def _cells(intervals) -> dict[str, Cell]:
    """Round columns from :class:`Interval` s or :class:`PairedDifference` s (no queries: missing)."""
    return {
        f"r{t}": Cell(getattr(iv, "value", getattr(iv, "diff", None)), iv.lo, iv.hi) if iv.n else Cell(None)
        for t, iv in enumerate(intervals)
    }


def _p_values(stats: FeedbackStats, label: str, pick) -> str:
    parts = [
        f"{d.arm} - {d.baseline}, round {t}: p = {pick(d)[t].p_value:.3g}"
        for d in stats.differences
        for t in report_rounds(stats.rounds)
    ]
    return f"Two-sided paired-bootstrap p-values of Δ{label}: " + "; ".join(parts) + "."


def feedback_tables(run: FeedbackRun, stats: FeedbackStats, options: ReportOptions) -> list[Table]:
    k, rounds, note = stats.k, stats.rounds, protocol_line(run)
    boot = (
        f"Intervals: {options.percent} percentile bootstrap over queries (B = {options.n_boot}, seed {options.seed})."
    )
    hits = Table(
        f"Cumulative Hits@{k} by round: {run.name}",
        ("Arm",),
        _round_columns(rounds, HIGHER, ".3f"),
        [Row((run.arm_label(a),), _cells(s.hits)) for a, s in stats.series.items()],
        [note, boot],
    )
    bri = Table(
        f"BRI by round: {run.name}",
        ("Arm",),
        _round_columns(rounds, LOWER, ".3f"),
        [Row((run.arm_label(a),), _cells(s.bri)) for a, s in stats.series.items()],
        [note, boot],
    )
    tables = [hits, bri]
    if stats.differences:
        paired = "Paired bootstrap: both arms on the same resampled queries."
        names = [f"{run.arm_label(d.arm)} - {d.baseline}" for d in stats.differences]
        tables.append(
            Table(
                f"ΔHits@{k} (arm - exclude) by round: {run.name}",
                ("Difference",),
                _round_columns(rounds, None, "+.3f"),
                [Row((n,), _cells(d.hits)) for n, d in zip(names, stats.differences, strict=True)],
                [note, paired, _p_values(stats, f"Hits@{k}", lambda d: d.hits)],
            )
        )
        tables.append(
            Table(
                f"ΔBRI (arm - exclude) by round: {run.name}",
                ("Difference",),
                _round_columns(rounds, None, "+.3f"),
                [Row((n,), _cells(d.bri)) for n, d in zip(names, stats.differences, strict=True)],
                [note, paired + " Negative = the arm is better.", _p_values(stats, "BRI", lambda d: d.bri)],
            )
        )
    if run.summary:
        # over found queries only: a lower mean is not better when fewer queries are found
        cols = (
            Column("rts_mean", "rounds to success (mean)", None, ".2f"),
            Column("rts_median", "rounds to success (median)", None, ".1f"),
            Column("never", "never found", LOWER, ".3f"),
        )
        rows = [
            Row(
                (run.arm_label(a),),
                {
                    "rts_mean": Cell.of(s.get("rounds_to_success_mean")),
                    "rts_median": Cell.of(s.get("rounds_to_success_median")),
                    "never": Cell.of(s.get("never_found")),
                },
            )
            for a, s in run.summary.items()
            if a in run.ranks
        ]
        tables.append(
            Table(
                f"Rounds to success (rank <= {run.success_k}): {run.name}",
                ("Arm",),
                cols,
                rows,
                [note, "Rounds to success: over the queries found within T rounds."],
            )
        )
    return tables
