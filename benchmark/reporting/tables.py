"""The results table: one row per result file, built from ``results/*.json`` only.

Columns are the headline retrieval metrics per direction, read from the tidy frame of
:func:`benchmark.results.results_frame` (pivoted to one row per run). Text taken from result
files (model, dataset, tag) is escaped, so a hostile or odd name cannot break the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.atomic import atomic_write_text
from benchmark.reporting.escape import markdown
from benchmark.results import load_result_files, results_frame

COLUMNS = (
    ("t2i/R@1", "T2I R@1"),
    ("t2i/R@5", "T2I R@5"),
    ("t2i/R@10", "T2I R@10"),
    ("t2i/MRR", "T2I MRR"),
    ("t2i/Sim", "T2I Sim"),
    ("i2t/R@1", "I2T R@1"),
    ("i2t/R@5", "I2T R@5"),
    ("i2t/MRR", "I2T MRR"),
    ("i2i/R@5", "I2I R@5"),
    ("i2i/MRR", "I2I MRR"),
)

DEFINITIONS = """\
Definitions. R@k: share of queries with at least one relevant item among the top k (hit
rate). MRR: mean reciprocal rank of the first relevant item over the full ranking. Ties
count against the model (a relevant item ranks below every non-relevant item with an equal
score). Sim: mean similarity, under the model's own scoring, of each query with its source
item (T2I: a caption with the image it was written for). For CLIP it is the cosine
similarity of the normalized embeddings; for the BLIP2 family the first-stage ITC score
(max over query outputs of the cosine), since a re-rank score is not a similarity. T2I: text query, image gallery; I2T: image query,
caption gallery; I2I: image query, image gallery without the query itself."""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _runs(results: list[dict]) -> pd.DataFrame:
    """One row per run: its file name, labels, query count and time (Python values, as stored)."""
    rows = [
        (
            Path(r.get("_path", "")).name,
            r["model"],
            r["dataset"],
            r["size"],
            r["tag"],
            r["provenance"].get("n_queries"),
            r["timings"].get("total_s"),
        )
        for r in results
    ]
    return pd.DataFrame(rows, columns=["file", "model", "dataset", "size", "tag", "queries", "time"], dtype=object)


def results_table(results: list[dict]) -> str:
    head = ["Model", "Dataset", "Size", "Tag", *[h for _, h in COLUMNS], "Queries", "Time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    wide = results_frame(results).pivot(index="file", columns="metric", values="value")
    wide = wide.reindex(columns=[k for k, _ in COLUMNS])
    runs = _runs(results).join(wide, on="file").sort_values(["dataset", "model", "tag"], kind="stable")
    for row in runs.to_dict("records"):
        cells = [markdown(row[k]) for k in ("model", "dataset", "size", "tag")]
        cells += [_fmt(row[k]) for k, _ in COLUMNS]
        cells += [_fmt(row["queries"]), _fmt(row["time"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(results: list[dict], results_dir: Path) -> str:
    """The text of ``reports/results.md``: every run in one table, then the definitions."""
    text = "# instructsee-bench results\n\n"
    if results:
        return text + results_table(results) + "\n\n" + DEFINITIONS + "\n"
    return text + f"No result files in {markdown(str(results_dir))}. Run `bench run` first.\n"


def write_report(results_dir: Path, out_dir: Path) -> Path:
    results = load_result_files(results_dir, task="retrieval")
    return atomic_write_text(Path(out_dir) / "results.md", results_markdown(results, results_dir))
