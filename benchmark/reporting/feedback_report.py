"""``feedback.md`` / ``feedback.tex`` and the convergence plots, from validated feedback runs.

One section per run (:mod:`benchmark.reporting.feedback_runs`): its protocol, its LLM arm's
fallbacks to score refreshing (an arm whose rounds all fell back is labelled so), the per-round
tables with bootstrap intervals (:mod:`benchmark.reporting.feedback_tables`) and a link to
its convergence plot (:mod:`benchmark.reporting.feedback_figures`). Without feedback runs
the Markdown says so and the LaTeX file holds only its header: the report still builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmark.reporting.escape import markdown_code, markdown_inline
from benchmark.reporting.feedback_figures import write_convergence
from benchmark.reporting.feedback_runs import FeedbackRun
from benchmark.reporting.feedback_stats import feedback_stats
from benchmark.reporting.feedback_tables import feedback_tables
from benchmark.reporting.figures import FigureOutcome
from benchmark.reporting.markdown_table import render_markdown
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.table_model import Table


@dataclass
class FeedbackReport:
    markdown: str
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureOutcome] = field(default_factory=list)


def build_feedback_report(
    runs: list[FeedbackRun], options: ReportOptions, figures_dir: Path, preamble: str
) -> FeedbackReport:
    """The Markdown text and the tables (for LaTeX); writes each run's convergence plot."""
    if not runs:
        return FeedbackReport(
            preamble + "\nNo feedback result files (`feedback__*.json`). Run `bench feedback` first.\n"
        )
    out = FeedbackReport(preamble)
    parts = [preamble]
    for run in runs:
        stats = feedback_stats(run.ranks, run.success_k, options)
        tables = feedback_tables(run, stats, options)
        fig = write_convergence(run, stats, options, figures_dir)
        out.tables += tables
        out.figures.append(fig)
        parts += [
            f"\n## {markdown_inline(run.name)}\n",
            # the file's name in the results folder: no machine path in a report
            f"File: {markdown_code(Path(run.path).name)}. Every table's notes state the protocol.\n",
        ]
        if (fallbacks := run.fallback_text()) is not None:
            parts.append(markdown_inline(fallbacks + ".") + "\n")
        parts += [render_markdown(t) for t in tables]
        if fig.skipped:
            parts.append(f"Convergence plot skipped: {markdown_inline(fig.skipped)}\n")
        else:
            rel = f"{figures_dir.name}/{run.stem}"
            parts.append(f"![convergence: {markdown_inline(run.name)}]({rel}.png) ([PDF]({rel}.pdf))\n")
    out.markdown = "\n".join(parts)
    return out
