"""The convergence plot of a feedback run: ``figures/feedback__<model>__<dataset>__<size>__<tag>.png`` / ``.pdf``.

Two panels over rounds 0..T, one line per arm: cumulative Hits@K (higher is better) and
BRI over the first t rounds (lower is better), each with its bootstrap band (the
interval of :mod:`benchmark.reporting.feedback_stats`, shaded). The protocol (K, T,
display, simulated user model, question writer) is in the title. Written through
:func:`benchmark.reporting.figures.render_figure`: a failing plot is skipped with a note.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.reporting.feedback_runs import FeedbackRun
from benchmark.reporting.feedback_stats import FeedbackStats
from benchmark.reporting.figures import FigureOutcome, new_figure, render_figure
from benchmark.reporting.options import ReportOptions


def convergence(run: FeedbackRun, stats: FeedbackStats, options: ReportOptions):
    fig, (ax_hits, ax_bri) = new_figure(2)
    x = list(range(stats.rounds + 1))
    for arm, s in stats.series.items():
        for ax, ivs in ((ax_hits, s.hits), (ax_bri, s.bri)):
            (line,) = ax.plot(x, [iv.value for iv in ivs], marker="o", label=run.arm_label(arm))
            ax.fill_between(
                x, [iv.lo for iv in ivs], [iv.hi for iv in ivs], color=line.get_color(), alpha=0.2, linewidth=0
            )
    for ax, label in (
        (ax_hits, f"cumulative Hits@{stats.k} (higher is better)"),
        (ax_bri, "BRI over rounds 0..t (lower is better)"),
    ):
        ax.set_xlabel("feedback round t")
        ax.set_ylabel(label)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    ax_hits.legend(fontsize="small")
    fig.suptitle(
        f"{run.model} on {run.dataset} ({run.size}, {run.tag}): K = {run.success_k}, "
        f"display {run.display}, {run.user_model} user, writer {run.writer_text()}; "
        f"bands: {options.percent} bootstrap",
        fontsize="small",
    )
    return fig


def write_convergence(run: FeedbackRun, stats: FeedbackStats, options: ReportOptions, out_dir: Path) -> FigureOutcome:
    return render_figure(run.stem, Path(out_dir) / run.stem, lambda: convergence(run, stats, options))
