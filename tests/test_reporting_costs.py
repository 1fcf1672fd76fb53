"""Honest cost accounting: GFLOPs split into the gallery side and the query side, ours' gallery
pass counted at L_max in the comparison's cost column, with a note."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.reporting.comparison import comparison_tables
from benchmark.reporting.cost_split import gallery_gflops, query_gflops, total_gflops
from benchmark.reporting.estimates import Estimator
from benchmark.reporting.markdown_table import render_markdown
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paper import load_paper_tables
from benchmark.results import load_result, load_result_files
from tests.reporting_fixtures import ranks_with_hit_rate, write_result

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
OPTIONS = ReportOptions(n_boot=200, seed=0)
N = 60
BLIP2 = {"gflops/vision": 0.02, "gflops/qformer": 0.024, "gflops/text": 0.007, "gflops/rerank": 0.031}
OURS = {
    "gflops/vision": 0.02,
    "gflops/qformer": 0.006,
    "gflops/qformer_index": 0.035,
    "gflops/text": 0.011,
    "gflops/rerank": 0.013,
}


def _with_total(parts: dict[str, float]) -> dict[str, float]:
    return parts | {"gflops/total": sum(v for k, v in parts.items() if k != "gflops/qformer_index")}


def test_the_split_on_the_reference_runs_moves_with_the_measured_throughput():
    ours = load_result(REFERENCE / "ours__synthetic__default.json")["metrics"]
    blip2 = load_result(REFERENCE / "blip2__synthetic__default.json")["metrics"]
    assert gallery_gflops(ours) == ours["gflops/vision"] + ours["gflops/qformer_index"]
    assert query_gflops(ours) == ours["gflops/text"] + ours["gflops/rerank"]
    assert total_gflops(ours) == pytest.approx(gallery_gflops(ours) + query_gflops(ours), rel=1e-12)
    assert total_gflops(blip2) == blip2["gflops/total"]  # no gallery index recorded: the recorded total, unchanged
    assert gallery_gflops(blip2) == blip2["gflops/vision"] + blip2["gflops/qformer"]
    # throughput times encode_images, the gallery side: the gallery GFLOPs and the img/s now agree in direction,
    # where the recorded total (an L-query pass) said the opposite. The img/s ratio is the side-by-side speed
    # run's (two runs' own throughputs, minutes apart, differ by more than the models do)
    speed = load_result(REFERENCE / "ours__synthetic__speed__default.json")["metrics"]
    gallery_ratio = gallery_gflops(ours) / gallery_gflops(blip2)
    throughput_ratio = speed["speed/ratio"]
    assert (gallery_ratio > 1) == (throughput_ratio < 1)


def test_a_run_without_components_keeps_its_recorded_total_and_no_split():
    assert total_gflops({"gflops/total": 2.5}) == 2.5
    assert gallery_gflops({"gflops/total": 2.5}) is None and query_gflops({"gflops/total": 2.5}) is None
    assert gallery_gflops({"gflops/vision": 0.02, "gflops/text": 0.01}) == 0.02  # CLIP: no Q-Former
    assert total_gflops({"gflops/vision": float("nan")}) is None


def _cells(md: str, model: str) -> dict[str, str]:
    rows = [
        [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in md.splitlines() if line.startswith("| ")
    ]
    head = rows[0]
    row = next(r for r in rows[1:] if r[0] == model)
    return dict(zip(head, row, strict=True))


def test_comparison_table_shows_both_sides_and_counts_the_gallery_pass_at_l_max(tmp_path):
    rng = np.random.default_rng(0)
    for model, parts, config in (("blip2", BLIP2, None), ("ours", OURS, {"l_max": 48})):
        write_result(
            tmp_path,
            model=model,
            ranks=ranks_with_hit_rate(rng, N, 0.3),
            sims=rng.random(N),
            extra_metrics=_with_total(parts),
            model_config=config,
        )
    tables = comparison_tables(load_result_files(tmp_path), load_paper_tables(), Estimator(OPTIONS))
    table = next(t for t in tables if t.title == "Model comparison on synthetic")
    md = render_markdown(table)
    ours, blip2 = _cells(md, "ours"), _cells(md, "blip2")
    fmt = lambda v: format(v, ".4g")  # noqa: E731 - the column's precision
    assert ours["GFLOPs gallery ↓"] == fmt(OURS["gflops/vision"] + OURS["gflops/qformer_index"])
    assert ours["GFLOPs query ↓"] == f"**{fmt(OURS['gflops/text'] + OURS['gflops/rerank'])}**"  # the cheaper side
    recorded = _with_total(OURS)["gflops/total"]
    assert ours["GFLOPs ↓"].strip("*") == fmt(recorded - OURS["gflops/qformer"] + OURS["gflops/qformer_index"])
    assert ours["GFLOPs ↓"].strip("*") != fmt(recorded)
    assert blip2["GFLOPs ↓"].strip("*") == fmt(_with_total(BLIP2)["gflops/total"])
    assert blip2["GFLOPs gallery ↓"] == f"**{fmt(0.044)}**"  # blip2's 32-query gallery pass is the cheaper one here
    assert any("L\\_max = 48 queries" in n for n in md.splitlines() if n.startswith("- GFLOPs"))


def test_no_cost_note_without_a_gallery_index(tmp_path):
    rng = np.random.default_rng(1)
    write_result(
        tmp_path,
        model="blip2",
        ranks=ranks_with_hit_rate(rng, N, 0.3),
        sims=rng.random(N),
        extra_metrics=_with_total(BLIP2),
    )
    tables = comparison_tables(load_result_files(tmp_path), load_paper_tables(), Estimator(OPTIONS))
    md = render_markdown(next(t for t in tables if t.title == "Model comparison on synthetic"))
    assert "L\\_max" not in md and _cells(md, "blip2")["GFLOPs gallery ↓"] == format(0.044, ".4g")
