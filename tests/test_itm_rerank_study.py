"""scripts/itm_rerank_study.py: re-ranked vs ITC-only R@K from a result file's per-query ranks,
with paired bootstrap intervals (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "itm_rerank_study.py"
REFERENCE = ROOT / "results" / "reference" / "blip2__synthetic__default.json"


def _script():
    return load_script(SCRIPT)


def test_recall_is_per_query_and_leaves_out_queries_without_relevant_items():
    s = _script()
    r = s.recall(np.array([1, 2, 6, 0, 11]), 5)
    assert r[:3].tolist() == [1.0, 1.0, 0.0] and np.isnan(r[3]) and r[4] == 0.0


def test_study_matches_the_metrics_of_the_result_file_and_pairs_the_queries(tmp_path):
    s = _script()
    metrics = json.loads(REFERENCE.read_text())["metrics"]
    row = s.study(REFERENCE, "t2i", n_boot=200)
    assert row["model"] == "blip2" and row["k_test"] == 4 and row["n"] == metrics["t2i/n_queries"]
    for k in s.KS:
        assert abs(row[f"R@{k}"] - metrics[f"t2i/R@{k}"]) < 1e-9
        assert abs(row[f"itc/R@{k}"] - metrics[f"itc/t2i/R@{k}"]) < 1e-9
        d = row[f"diff/R@{k}"]
        assert abs(d["diff"] - (row[f"R@{k}"] - row[f"itc/R@{k}"])) < 1e-9 and d["lo"] <= d["diff"] <= d["hi"]
    # k_test 4 re-ranks inside the top 4 only: R@5 and R@10 cannot change
    assert row["diff/R@5"]["diff"] == row["diff/R@10"]["diff"] == 0.0
    out = tmp_path / "study.json"
    s.main(["--results", str(REFERENCE), "--n-boot", "200", "--json", str(out)])
    assert json.loads(out.read_text())["rows"][0]["R@1"] == row["R@1"]
