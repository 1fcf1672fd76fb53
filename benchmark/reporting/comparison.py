"""The model comparison: models x datasets, as report tables.

* An overview in the paper's layout: Sim per dataset for every compared run, beside the
  paper's Sim per dataset, memory and throughput.
* One table per dataset: Sim, R@5, MRR (with intervals), Q-Len, GFLOPs (gallery side,
  query side and their sum, :mod:`benchmark.reporting.cost_split`: ours' gallery pass counted
  at L_max, with a note), memory and throughput of every compared run (see
  :mod:`benchmark.reporting.selection`), beside the
  paper's Sim on that dataset (when the paper has it), memory and throughput.

Models of the paper that have no run get a row with the paper's numbers only, so the table
shows what has not been run. Nothing missing is filled in.
"""

from __future__ import annotations

from benchmark.reporting import cost_split
from benchmark.reporting.estimates import MEASURES, Cell, Estimator
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paper import PaperTables
from benchmark.reporting.selection import comparison_runs, datasets, model_rank
from benchmark.reporting.table_model import Column, Row, Table

OUR_MEASURES = ("sim", "r5", "mrr", "qlen", "gflops_g", "gflops_q", "gflops", "memory", "thr")
PAPER_COST = ("memory", "thr")
LABELS = ("Model", "Size", "Tag")
NOT_RUN = ("not run", "")


def _column(measure: str, *, key: str | None = None, label: str | None = None, group: str = "") -> Column:
    m = MEASURES[measure]
    return Column(key or measure, label or m.label, m.better, m.fmt, group)


def _labels(result: dict) -> tuple[str, ...]:
    return (str(result.get("model")), str(result.get("size")), str(result.get("tag")))


def _paper_only_models(paper: PaperTables, present: set[str]) -> list[str]:
    return sorted((m for m in paper.comparison.rows if m not in present), key=model_rank)


def legend(options: ReportOptions) -> str:
    return (
        f"Direction {options.direction}. [lo, hi]: {options.percent} percentile bootstrap interval over queries "
        f"(B = {options.n_boot}, seed {options.seed}). Bold: the best value of each column, compared at the "
        "precision shown (arrow up: higher is better; arrow down: lower is better, the cost columns; "
        "Q-Len is not ranked: fewer queries are better only at equal accuracy). '–': not in the result "
        "files, never filled in."
    )


def dataset_table(results: list[dict], dataset: str, paper: PaperTables, estimator: Estimator) -> Table:
    group = paper.label
    columns = [_column(m) for m in OUR_MEASURES]
    in_paper = paper.has_dataset(dataset)
    if in_paper:
        columns.append(_column("sim", key="paper_sim", label=f"Sim ({paper.datasets[dataset]})", group=group))
    columns += [_column(m, key=f"paper_{m}", group=group) for m in PAPER_COST]
    table = Table(f"Model comparison on {dataset}", LABELS, tuple(columns))
    runs = [r for r in comparison_runs(results) if r.get("dataset") == dataset]
    for r in runs:
        cells = dict(estimator.cells(r))
        model = str(r.get("model"))
        if in_paper:
            cells["paper_sim"] = Cell.of(paper.comparison_value(model, "sim", dataset))
        for m in PAPER_COST:
            cells[f"paper_{m}"] = Cell.of(paper.comparison_value(model, m))
        table.rows.append(Row(_labels(r), cells))
    for model in _paper_only_models(paper, {str(r.get("model")) for r in runs}):
        cells = {f"paper_{m}": Cell.of(paper.comparison_value(model, m)) for m in PAPER_COST}
        if in_paper:
            cells["paper_sim"] = Cell.of(paper.comparison_value(model, "sim", dataset))
        table.rows.append(Row((model, *NOT_RUN), cells))
    table.notes.append(legend(estimator.options))
    if (cost := cost_split.note(runs)) is not None:
        table.notes.append(cost)
    if not in_paper:
        table.notes.append(f"The paper reports no numbers on {dataset}; its memory and throughput are per model.")
    table.notes.append(f"{group}: {paper.comparison.source}")
    return table


def overview_table(results: list[dict], paper: PaperTables, estimator: Estimator) -> Table:
    group = paper.label
    ours = datasets(results)
    columns = [_column("sim", key=f"sim:{d}", label=f"Sim {d}") for d in ours]
    columns += [
        _column("sim", key=f"paper_sim:{d}", label=f"Sim {name}", group=group) for d, name in paper.datasets.items()
    ]
    columns += [_column(m, key=f"paper_{m}", group=group) for m in PAPER_COST]
    table = Table("Sim by dataset (the paper's layout)", LABELS, tuple(columns))
    rows: dict[tuple[str, ...], dict[str, Cell]] = {}
    for r in comparison_runs(results):
        cells = rows.setdefault(_labels(r), {})
        cells[f"sim:{r.get('dataset')}"] = estimator.cells(r)["sim"]
    present = {labels[0] for labels in rows}
    for labels in list(rows) + [(m, *NOT_RUN) for m in _paper_only_models(paper, present)]:
        cells = rows.setdefault(labels, {})
        for d in paper.datasets:
            cells[f"paper_sim:{d}"] = Cell.of(paper.comparison_value(labels[0], "sim", d))
        for m in PAPER_COST:
            cells[f"paper_{m}"] = Cell.of(paper.comparison_value(labels[0], m))
    table.rows = [Row(labels, cells) for labels, cells in rows.items()]
    table.notes.append(legend(estimator.options))
    table.notes.append(f"{group}: {paper.comparison.source}")
    return table


def comparison_tables(results: list[dict], paper: PaperTables, estimator: Estimator) -> list[Table]:
    if not results:
        return []
    return [overview_table(results, paper, estimator)] + [
        dataset_table(results, d, paper, estimator) for d in datasets(results)
    ]
