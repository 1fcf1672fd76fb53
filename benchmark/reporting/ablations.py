"""The ablation tables: one per complete group of each ablation, beside the paper's table.

Columns as the paper's ablation tables: Sim, R@5, MRR (with intervals), Q-Len, GFLOPs
(gallery side, query side and their sum, :mod:`benchmark.reporting.cost_split`), throughput;
then the paper's own columns (Sim, R@5, MRR, Q-Len, GFLOPs, throughput) for the ablations
the paper has (QScaler and Q-Former; not the attention one, which is the suite's own). Rows
are the arms, in the ablation's order. Under each table: the paired difference of every
other arm against the first (reference) arm on the same queries (R@1, then the table's
per-query measures), with its interval and p-value.

An ablation with no complete group (runs of both arms whose configs are otherwise equal) is
shown with the paper's numbers only and a note saying which runs it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.reporting import cost_split
from benchmark.reporting.ablation_arms import Ablation, ArmGroup, arm_groups, report_ablations
from benchmark.reporting.comparison import legend
from benchmark.reporting.estimates import MEASURES, Cell, Estimator
from benchmark.reporting.paired import compare_runs, describe_difference
from benchmark.reporting.paper import PaperTable, PaperTables
from benchmark.reporting.per_query import MEASURES as PER_QUERY_MEASURES
from benchmark.reporting.per_query import PairingError, result_name
from benchmark.reporting.table_model import Column, Row, Table

ABLATION_MEASURES = ("sim", "r5", "mrr", "qlen", "gflops_g", "gflops_q", "gflops", "thr")
PAPER_MEASURES = ("sim", "r5", "mrr", "qlen", "gflops", "thr")  # the paper's ablation columns
LABELS = ("Setting", "Tag")
#: the paired differences under each table: R@1 (what re-ranking moves first), then the table's
PAIRED_MEASURES = ("r1", *PER_QUERY_MEASURES)
PAIRED_LABELS = {"r1": "R@1"}


@dataclass
class AblationSection:
    ablation: Ablation
    tables: list[Table]
    complete: bool


def _columns(paper_table: PaperTable | None, group: str) -> tuple[Column, ...]:
    cols = [Column(m, MEASURES[m].label, MEASURES[m].better, MEASURES[m].fmt) for m in ABLATION_MEASURES]
    if paper_table is not None:
        cols += [Column(f"paper_{m}", MEASURES[m].label, MEASURES[m].better, ".2f", group) for m in PAPER_MEASURES]
    return tuple(cols)


def _paper_cells(paper_table: PaperTable | None, arm_key: str) -> dict[str, Cell]:
    row = paper_table.rows.get(arm_key) if paper_table else None
    return {f"paper_{m}": Cell.of(row.values.get(m) if row else None) for m in PAPER_MEASURES}


def paired_notes(group: ArmGroup, estimator: Estimator) -> list[str]:
    ablation = group.ablation
    ref = ablation.arms[0]
    ref_run = group.runs.get(ref.key)
    notes = []
    for arm in ablation.arms[1:]:
        run = group.runs.get(arm.key)
        if run is None or ref_run is None:
            continue
        try:
            diffs = compare_runs(run, ref_run, estimator.options, PAIRED_MEASURES)
        except PairingError as e:
            notes.append(f"No paired test of {arm.label} vs {ref.label}: {e}")
            continue
        parts = [
            describe_difference(PAIRED_LABELS.get(m) or MEASURES[m].label, d, 2 if m == "qlen" else 4)
            for m, d in diffs.items()
        ]
        notes.append(
            f"Paired ({arm.label} minus {ref.label}, same queries, B = {estimator.options.n_boot}): "
            + "; ".join(parts)
            + "."
        )
    return notes


def _seed(group: ArmGroup):
    return next(iter(group.runs.values())).get("seed")


def group_table(group: ArmGroup, paper: PaperTables, estimator: Estimator, show_seed: bool = False) -> Table:
    """``show_seed``: name the group's seed in the title (the ablation has groups at several seeds)."""
    a = group.ablation
    paper_table = paper.ablations.get(a.name)
    title = f"{a.title}: {a.model} on {group.dataset} ({group.size})"
    if group.context():
        title += f"; {group.context()}"
    if show_seed:
        title += f"; seed {_seed(group)}"
    table = Table(title, LABELS, _columns(paper_table, paper.label))
    for arm in a.arms:
        run = group.runs.get(arm.key)
        cells = dict(estimator.cells(run)) if run else {}
        cells.update(_paper_cells(paper_table, arm.key))
        table.rows.append(Row((arm.label, str(run.get("tag")) if run else "not run"), cells))
    table.notes.append(
        "Arms from the stored config (model_config, else config.model_args), files: "
        + ", ".join(f"{k}={result_name(r)}" for k, r in group.runs.items())
        + "."
    )
    table.notes += paired_notes(group, estimator)
    if group.duplicates:
        table.notes.append("Also found for an arm already shown (not used): " + ", ".join(group.duplicates) + ".")
    table.notes.append(legend(estimator.options))
    if (cost := cost_split.note(list(group.runs.values()))) is not None:
        table.notes.append(cost)
    if paper_table is not None:
        table.notes.append(f"{paper.label}: {paper_table.source}")
    return table


def missing_table(ablation: Ablation, groups: list[ArmGroup], paper: PaperTables) -> Table:
    paper_table = paper.ablations.get(ablation.name)
    table = Table(f"{ablation.title}: not run", LABELS, _columns(paper_table, paper.label))
    for arm in ablation.arms:
        table.rows.append(Row((arm.label, "not run"), _paper_cells(paper_table, arm.key)))
    values = " and ".join(str(arm.key) for arm in ablation.arms)
    table.notes.append(
        f"Needs runs of {ablation.model} with model_args.{ablation.field} = {values}, "
        "configs otherwise equal (same data, training, seed and other switches)."
    )
    found = [result_name(r) for g in groups for r in g.runs.values()]
    if found:
        table.notes.append("Found only one arm per config: " + ", ".join(found) + ".")
    if paper_table is not None:
        table.notes.append(f"{paper.label}: {paper_table.source}")
    return table


def ablation_sections(results: list[dict], paper: PaperTables, estimator: Estimator) -> list[AblationSection]:
    sections = []
    for ablation in report_ablations().values():
        groups = arm_groups(results, ablation)
        complete = [g for g in groups if g.complete]
        several = len({_seed(g) for g in complete}) > 1
        tables = [group_table(g, paper, estimator, several) for g in complete] or [
            missing_table(ablation, groups, paper)
        ]
        sections.append(AblationSection(ablation, tables, bool(complete)))
    return sections
