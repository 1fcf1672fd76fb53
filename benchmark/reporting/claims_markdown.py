"""Render the claim verdicts as ``reports/claims.md``: a summary table, then each claim with
its rule and its evidence per dataset. All text from result files is escaped."""

from __future__ import annotations

from collections import Counter

from benchmark.reporting.claims import VERDICTS, Claim, Verdict
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


def render_claims(evaluated: list[tuple[Claim, list[Verdict]]], options: ReportOptions) -> str:
    counts = Counter(v.verdict for _, verdicts in evaluated for v in verdicts)
    lines = ["# Paper claims against these results", "", options.describe(), "",
             RULES.format(m=options.equal_margin, pct=options.percent, tol=options.throughput_tolerance), "",
             "Summary: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ".", "",
             "| Claim | Scope | Verdict |", "|:---|:---|:---|"]
    for claim, verdicts in evaluated:
        for v in verdicts:
            lines.append(f"| {esc(claim.statement)} | {esc(v.scope)} | **{v.verdict}** |")
    for claim, verdicts in evaluated:
        lines += ["", f"## {esc(claim.statement)}", "", f"Rule: {esc(claim.rule)}.", ""]
        lines += [f"- {esc(v.scope)}: **{v.verdict}**. {esc(v.evidence)}" for v in verdicts]
    return "\n".join(lines) + "\n"
