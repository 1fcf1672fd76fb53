"""Render the claim verdicts as ``reports/claims.md``: a summary table (with whose claim each
is), then each claim with its origin (the paper's words, quoted, or why it is the suite's
own), its rule and its evidence per dataset, then the claims across seeds
(:mod:`benchmark.reporting.claims_seeds`: the verdict at each seed and the interval across
seeds; with one seed, a line saying there is none). All text from result files is escaped."""

from __future__ import annotations

from collections import Counter

from benchmark.reporting.claims import PAPER, VERDICTS, Claim, Origin, Verdict
from benchmark.reporting.claims_seeds import AcrossEffect, SeedReport
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


SEEDS_RULE = """\
Across seeds: each claim is judged on the runs of each seed alone (the same rules, intervals over
that seed's queries). Per effect (the number a verdict rests on), the mean of the per-seed values
and the {pct} Student-t interval of that mean over the n seeds that have it (mean ± t(n-1) · sd /
sqrt(n)); the verdict across seeds applies the claim's rule to those intervals (contradicted if
any effect's is, supported if all are; "not tested" below two seeds)."""


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _effect_text(e: AcrossEffect) -> str:
    interval = f" [{_number(e.lo, e.digits)}, {_number(e.hi, e.digits)}]" if e.lo is not None else ""
    per_seed = ", ".join(f"{s}: {v:+.{e.digits}f}" for s, v in e.values)
    return f"{esc(e.label)} {_number(e.mean, e.digits)}{interval} over {e.n} seed(s) ({per_seed})"


def render_seeds(report: SeedReport | None, options: ReportOptions) -> list[str]:
    """The section across seeds (a line saying there is none with fewer than two seeds)."""
    lines = ["", "## Across seeds", ""]
    seeds = report.seeds if report else ()
    if len(seeds) < 2:
        shown = f"{len(seeds)} seed" + (f" ({seeds[0]})" if seeds else "")
        return lines + [
            f"{shown}: no across-seed interval (`bench reproduce --seeds N` runs the claims' models at N seeds)."
        ]
    assert report is not None
    lines += [SEEDS_RULE.format(pct=options.percent), "", f"Seeds: {', '.join(map(str, seeds))}.", ""]
    head = "| Claim | Scope | " + " | ".join(f"seed {s}" for s in seeds) + " | Across seeds |"
    lines += [head, "|" + ":---|" * (len(seeds) + 3)]
    for claim, rows in report.claims:
        for row in rows:
            cells = [f"{v.verdict}" if v else "–" for _, v in row.per_seed]
            lines.append(
                f"| {esc(claim.statement)} | {esc(row.scope)} | " + " | ".join(cells) + f" | **{row.verdict}** |"
            )
    for claim, rows in report.claims:
        effects = [(row, e) for row in rows for e in row.effects]
        if not effects:
            continue
        lines += ["", f"### {esc(claim.statement)}", ""]
        lines += [f"- {esc(row.scope)}: {_effect_text(e)}: **{e.verdict}**." for row, e in effects]
    return lines


def render_claims(
    evaluated: list[tuple[Claim, list[Verdict]]],
    options: ReportOptions,
    citation: str,
    seeds: SeedReport | None = None,
    base_seed: int | None = None,
) -> str:
    """``citation``: how the reports name the paper (authors, title, venue, year); ``seeds``: the
    claims across seeds; ``base_seed``: the seed of ``evaluated`` where the files hold several."""
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
        (
            f"Verdicts at the base seed {base_seed} (the across-seed section has the others). "
            if base_seed is not None
            else ""
        )
        + "Summary: "
        + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
        + ".",
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
    lines += render_seeds(seeds, options)
    return "\n".join(lines) + "\n"
