"""Render the claim verdicts as ``reports/claims.md``: a summary table (with whose claim each
is), then each claim with its origin (the paper's words, quoted, or why it is the suite's
own), its rule and its evidence per dataset. All text from result files is escaped."""

from __future__ import annotations

from collections import Counter

from benchmark.reporting.claims import PAPER, VERDICTS, Claim, Origin, Verdict
from benchmark.reporting.escape import markdown_inline as esc
from benchmark.reporting.options import ReportOptions

RULES = """\
Verdict rules (m = {m:g}; [lo, hi] = the {pct} interval of the paired difference A - B on the
same queries): *at least as good*: supported if lo >= -m, contradicted if hi < -m; *better*:
supported if lo > 0, contradicted if hi < m; *equal*: supported if [lo, hi] lies within [-m, m],
contradicted if it lies entirely outside; *shorter*: supported if hi < 0, contradicted if lo >= 0;
*grows with complexity*: Spearman's rho interval above 0 (contradicted if at or below 0, or if
every query got the same length); *faster*: throughput ratio above 1 + {tol:g} (contradicted
below 1 - {tol:g}), same machine only. Otherwise inconclusive; "not tested" when the runs are
absent (the evidence says which runs are needed)."""


WHOSE = {PAPER: "the paper's", "suite": "the suite's own"}


def origin_text(origin: Origin) -> str:
    """One paragraph: whose claim it is, with the paper's words quoted."""
    quotes = "; ".join(f"“{esc(q)}”" for q in origin.quotes)
    if origin.kind == PAPER:
        return f"The paper's claim ({esc(origin.where)}): {quotes}"
    text = f"The suite's own claim, not the paper's. {esc(origin.note)}"
    return text + (f" The paper ({esc(origin.where)}): {quotes}" if quotes else "")


def render_claims(evaluated: list[tuple[Claim, list[Verdict]]], options: ReportOptions, citation: str) -> str:
    """``citation``: how the reports name the paper (authors, title, venue, year)."""
    counts = Counter(v.verdict for _, verdicts in evaluated for v in verdicts)
    lines = [
        "# Claims against these results",
        "",
        options.describe(),
        "",
        (
            f"Paper: {esc(citation)}. Each claim says whose it is: the paper's (quoted, with its section) or the "
            "suite's own."
        ),
        "",
        RULES.format(m=options.equal_margin, pct=options.percent, tol=options.throughput_tolerance),
        "",
        "Summary: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ".",
        "",
        "| Claim | Whose | Scope | Verdict |",
        "|:---|:---|:---|:---|",
    ]
    for claim, verdicts in evaluated:
        for v in verdicts:
            lines.append(f"| {esc(claim.statement)} | {WHOSE[claim.origin.kind]} | {esc(v.scope)} | **{v.verdict}** |")
    for claim, verdicts in evaluated:
        lines += ["", f"## {esc(claim.statement)}", "", origin_text(claim.origin), "", f"Rule: {esc(claim.rule)}.", ""]
        lines += [f"- {esc(v.scope)}: **{v.verdict}**. {esc(v.evidence)}" for v in verdicts]
    return "\n".join(lines) + "\n"
