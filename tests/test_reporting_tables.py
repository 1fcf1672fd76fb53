"""Comparison and ablation tables from real-writer result files: bold, escaping, intervals,
missing values, paper columns, ablation arms from the stored config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.ablation_folders import discover
from benchmark.reporting.ablation_arms import arm_groups, report_ablations, unsupported_ablations
from benchmark.reporting.ablations import ablation_sections
from benchmark.reporting.comparison import comparison_tables
from benchmark.reporting.estimates import Estimator
from benchmark.reporting.latex_table import render_latex
from benchmark.reporting.markdown_table import render_markdown
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paper import PAPER_TABLES, load_paper_tables
from benchmark.results import load_result_files
from tests.reporting_fixtures import ranks_with_hit_rate, write_result

N = 300
HOSTILE = "evil|tag_<b>&$%#{x}~^\\[1]"
OPTIONS = ReportOptions(n_boot=200, seed=0)


def _runs(tmp_path, hit: dict[str, float], gflops: dict[str, float], tags: dict[str, str] | None = None):
    rng = np.random.default_rng(0)
    for model, h in hit.items():
        lengths = rng.integers(8, 40, N) if model == "ours" else None
        write_result(
            tmp_path,
            model=model,
            tag=(tags or {}).get(model, "default"),
            ranks=ranks_with_hit_rate(rng, N, h),
            sims=rng.random(N),
            lengths=lengths,
            extra_metrics={"gflops/total": gflops[model]},
        )
    return load_result_files(tmp_path)


def _md_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows]


def _dataset_table(results):
    tables = comparison_tables(results, load_paper_tables(), Estimator(OPTIONS))
    return next(t for t in tables if t.title == "Model comparison on synthetic")


def test_bold_marks_the_true_best_in_each_direction(tmp_path):
    results = _runs(tmp_path, {"clip": 0.2, "blip2": 0.35, "ours": 0.6}, {"clip": 1.5, "blip2": 3.0, "ours": 2.0})
    best_r5 = max(results, key=lambda r: r["metrics"]["t2i/R@5"])["model"]
    cheapest = min(results, key=lambda r: r["metrics"]["gflops/total"])["model"]
    table = _dataset_table(results)
    rows = _md_rows(render_markdown(table))
    head = rows[0]
    r5, gf = head.index("R@5 ↑"), head.index("GFLOPs ↓")
    by_model = {row[0]: row for row in rows[1:]}
    assert by_model[best_r5][r5].startswith("**") and sum(row[r5].startswith("**") for row in rows[1:]) == 1
    assert by_model[cheapest][gf].startswith("**") and sum(row[gf].startswith("**") for row in rows[1:]) == 1
    tex = render_latex(table)
    best_value = f"{max(r['metrics']['t2i/R@5'] for r in results):.4f}"
    assert f"\\textbf{{{best_value}}}" in tex


def test_intervals_contain_the_stored_point_estimates(tmp_path):
    results = _runs(tmp_path, {"clip": 0.2, "blip2": 0.35, "ours": 0.6}, {"clip": 1.5, "blip2": 3.0, "ours": 2.0})
    est = Estimator(OPTIONS)
    for r in results:
        cells = est.cells(r)
        for measure, key in (("r5", "t2i/R@5"), ("mrr", "t2i/MRR"), ("sim", "t2i/Sim")):
            c = cells[measure]
            assert c.value == pytest.approx(r["metrics"][key], abs=1e-6)
            assert c.lo <= c.value <= c.hi and c.lo < c.hi


def test_missing_values_stay_missing(tmp_path):
    results = _runs(tmp_path, {"clip": 0.2, "ours": 0.5}, {"clip": 1.5, "ours": 2.0})
    rows = _md_rows(render_markdown(_dataset_table(results)))
    head, by_model = rows[0], {row[0]: row for row in rows[1:]}
    assert by_model["clip"][head.index("Q-Len")] == "–"  # clip has no per-query lengths
    assert by_model["clip"][head.index("Memory (MB) ↓")] == "–"  # nothing measured it
    assert by_model["blip2"][head.index("R@5 ↑")] == "–"  # not run: a paper-only row
    paper = json.loads(PAPER_TABLES.read_text())["comparison"]["rows"]["blip2"]
    assert by_model["blip2"][head.index("paper (RTX 4090, real data): Throughput (img/s) ↑")] == f"{paper['thr']:.2f}"


def test_hostile_tags_are_escaped_in_markdown_and_latex(tmp_path):
    results = _runs(tmp_path, {"clip": 0.2, "ours": 0.5}, {"clip": 1.5, "ours": 2.0}, tags={"clip": HOSTILE})
    table = _dataset_table(results)
    md = render_markdown(table)
    rows = _md_rows(md)
    assert len({len(r) for r in rows}) == 1  # the pipe did not add a column
    assert "evil\\|tag\\_&lt;b&gt;&amp;$%#{x}\\~^\\\\\\[1\\]" in md and HOSTILE not in md
    tex = render_latex(table)
    assert (
        r"evil\textbar{}tag\_\textless{}b\textgreater{}\&\$\%\#\{x\}\textasciitilde{}\textasciicircum{}"
        r"\textbackslash{}{[}1{]}"
    ) in tex
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    amps = [len(re.findall(r"(?<!\\)&", line)) for line in body.splitlines()[1:]]
    assert len(set(amps)) == 1 and amps[0] == len(table.label_headers) + len(table.columns) - 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{2}{c}{paper (RTX 4090, real data)}"):
        assert rule in tex


@pytest.mark.parametrize(
    "text, span",
    [
        ("results_clean", "`results_clean`"),  # no backslash: escapes show literally inside code
        ("a`b", "``a`b``"),
        ("x``y", "```x``y```"),
        ("`edge", "`` `edge ``"),
        ("<b>&\nnext", "`<b>& next`"),  # HTML is not interpreted in a code span
    ],
)
def test_paths_in_prose_are_code_spans_nothing_can_end(text, span):
    from benchmark.reporting.escape import markdown_code

    assert markdown_code(text) == span


def test_ablation_arms_come_from_the_config_not_the_file_name(tmp_path):
    rng = np.random.default_rng(1)
    common = dict(model="ours", sims=rng.random(N), lengths=rng.integers(8, 40, N))
    write_result(tmp_path, ranks=ranks_with_hit_rate(rng, N, 0.4), **common)
    # named like the ablation, but its config keeps QScaler on: not the "without" arm
    write_result(tmp_path, tag="no-qscaler", ranks=ranks_with_hit_rate(rng, N, 0.4), **common)
    results = load_result_files(tmp_path)
    assert not any(g.complete for g in arm_groups(results, report_ablations()["qscaler"]))
    write_result(
        tmp_path, tag="plain-name", ranks=ranks_with_hit_rate(rng, N, 0.4), model_args={"qscaler": False}, **common
    )
    # the resolved model_config wins over the overrides
    write_result(
        tmp_path,
        tag="resolved",
        ranks=ranks_with_hit_rate(rng, N, 0.4),
        model_args={"qscaler": True},
        model_config={"qscaler": True, "freeze_qformer": True},
        **common,
    )
    results = load_result_files(tmp_path)
    (group,) = [g for g in arm_groups(results, report_ablations()["qscaler"]) if g.complete]
    assert group.runs["false"]["tag"] == "plain-name" and group.runs["true"]["tag"] == "default"
    assert group.duplicates == ["ours__synthetic__no-qscaler.json"]
    assert [g.runs for g in arm_groups(results, report_ablations()["qformer"]) if g.complete] == []
    sections = {s.ablation.name: s for s in ablation_sections(results, load_paper_tables(), Estimator(OPTIONS))}
    assert sections["qscaler"].complete and not sections["qformer"].complete
    md = render_markdown(sections["qscaler"].tables[0])
    assert "plain-name" in md and "Paired (without QScaler" in md and "paper (RTX 4090, real data): R@5" in md
    comparison = render_markdown(_dataset_table(results))
    assert "plain-name" not in comparison and "resolved" not in comparison  # ablation arms stay out


def test_runs_differing_only_in_their_tag_are_one_row(tmp_path):
    rng = np.random.default_rng(2)
    ranks, sims = ranks_with_hit_rate(rng, N, 0.3), rng.random(N)
    write_result(tmp_path, model="ours", tag="ablate-qscaler-with", ranks=ranks, sims=sims)
    write_result(tmp_path, model="ours", ranks=ranks, sims=sims)
    write_result(tmp_path, model="ours", tag="other-lr", ranks=ranks, sims=sims, model_args={"l_max": 40})
    tags = [row.labels[2] for row in _dataset_table(load_result_files(tmp_path)).rows if row.labels[0] == "ours"]
    assert tags == ["default", "other-lr"]


def test_report_ablations_are_derived_from_the_ablation_folders():
    """One source: the report's ablations are `bench ablate`'s folders (arm values, order, default, labels)."""
    folders = discover()
    assert set(report_ablations()) == set(folders) and unsupported_ablations() == {}
    for name, spec in folders.items():
        ablation = report_ablations()[name]
        assert ablation.model == spec.model and [a.name for a in ablation.arms] == [a.name for a in spec.arms]
        assert [{"model_args": {ablation.field: a.value}} for a in ablation.arms] == [a.overrides for a in spec.arms]
        assert ablation.default_arm.name == spec.default_arm.name and ablation.title == spec.heading
    qscaler = report_ablations()["qscaler"]
    assert (qscaler.field, qscaler.default, [a.key for a in qscaler.arms]) == ("qscaler", True, ["true", "false"])


def _folder(root: Path, name: str, arms: dict[str, dict], **meta) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "_ablation.json").write_text(
        json.dumps({"model": "ours", "description": "d", "arms": list(arms)} | meta)
    )
    for arm, overrides in arms.items():
        (root / name / f"{arm}.json").write_text(json.dumps(overrides))


def test_a_new_ablation_folder_reaches_the_report_and_unusable_ones_are_noted(tmp_path):
    _folder(
        tmp_path,
        "lmax",
        {"short": {"model_args": {"l_max": 16}}, "long": {"model_args": {"l_max": 48}}},
        default="long",
        labels={"short": "L_max = 16"},
    )
    _folder(tmp_path, "mixed", {"a": {"model_args": {"l_max": 16}}, "b": {"train": {"max_epochs": 1}}})
    _folder(tmp_path, "typo", {"a": {"model_args": {"l_max": 16}}}, default="b")
    (lmax,) = report_ablations(tmp_path).values()
    assert (lmax.field, lmax.default, [a.label for a in lmax.arms]) == ("l_max", 48, ["L_max = 16", "long"])
    assert lmax.title == "lmax: short / long"
    why = unsupported_ablations(tmp_path)["mixed"]
    assert "b.json" in why and "exactly one model_args field" in why
    assert "'default' must name the arm" in unsupported_ablations(tmp_path)["typo"]  # a note, not a failed report


def test_paper_reference_file_has_a_source_per_table():
    paper = load_paper_tables()
    assert paper.label == "paper (RTX 4090, real data)"
    assert paper.comparison.source and all(t.source for t in paper.ablations.values())
    assert set(paper.ablations) == {"qscaler", "qformer"}
    raw = json.loads(PAPER_TABLES.read_text())
    assert paper.comparison_value("ours", "sim", "coco") == raw["comparison"]["rows"]["ours"]["sim"]["coco"]
    assert paper.comparison_value("dynamicvit", "sim", "medpix") is None  # '-' in the paper
