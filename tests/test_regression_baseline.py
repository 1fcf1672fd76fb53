"""``bench regress --subset clip`` as CI runs it: the shipped tolerances (quality +-0.01, time and
memory ignored, every metric covered), ``--update`` writes exactly what the comparison reads, and a
committed CLIP baseline is of the suite's current config and implies the README's quality target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.regression.suite import suite_configs
from benchmark.regression.tolerances import EXACT, load_tolerances, shipped_path, tolerances_for
from benchmark.results import load_result
from tests.reporting_fixtures import ranks_with_hit_rate, write_result

runner = CliRunner()
BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline"
TARGET_R5 = 0.3  # the README main job's quality target (tests/test_run_e2e.py)


def test_shipped_tolerances_allow_float_drift_on_quality_and_ignore_costs(tmp_path):
    tol = load_tolerances()
    for key in ("t2i/R@1", "t2i/R@5", "i2t/R@10", "i2i/MRR", "t2i/Sim", "itc/t2i/R@5", "itc/i2t/Sim"):
        rule = tol.rule(key)
        assert (rule.abs, rule.better, rule.ignore) == (0.01, "higher", False), key
    for key in ("throughput_img_s", "throughput_cold_s", "throughput_query_s", "memory_mb", "memory_mb_reserved"):
        assert tol.rule(key).ignore, key
    rng = np.random.default_rng(0)
    path = write_result(
        tmp_path,
        model="ours",
        ranks=ranks_with_hit_rate(rng, 100, 0.4),
        sims=rng.random(100),
        lengths=rng.integers(8, 33, 100),
        extra_metrics={"gflops/total": 2.5, "memory_mb": 300.0},
    )
    uncovered = [k for k in load_result(path)["metrics"] if tol.rule(k) is EXACT]
    assert uncovered == []  # no metric of a real result file falls back to "must not change"


def test_update_writes_exactly_what_the_comparison_reads(tmp_path):
    (cfg,) = suite_configs(["clip"], [], tmp_path / "runs", tmp_path / "cache")
    rng = np.random.default_rng(1)
    write_result(
        tmp_path / "runs", model="clip", tag="regress", ranks=ranks_with_hit_rate(rng, 100, 0.4), sims=rng.random(100)
    )
    assert (tmp_path / "runs" / cfg.result_path().name).is_file()  # the name the suite's run gets
    base = tmp_path / "baseline"
    common = ["regress", "--subset", "clip", "--baseline-dir", str(base), "--from-results", str(tmp_path / "runs")]
    assert runner.invoke(app, [*common, "--update"]).exit_code == 0
    assert sorted(p.name for p in base.iterdir()) == sorted([cfg.result_path().name, "tolerances.json"])
    assert json.loads((base / "tolerances.json").read_text()) == json.loads(shipped_path().read_text())
    res = runner.invoke(app, common)
    assert res.exit_code == 0 and f"(tolerances: {base / 'tolerances.json'}): 0 regression(s)" in res.output


def test_committed_clip_baseline_matches_the_suite_and_implies_the_target(tmp_path):
    path = BASELINE / "clip__synthetic__regress.json"
    if not path.is_file():
        pytest.skip(
            "no CLIP baseline committed yet (the lead writes it on a quiet machine: "
            "bench regress --update --subset clip)"
        )
    baseline = load_result(path)
    (cfg,) = suite_configs(["clip"], [], tmp_path, tmp_path)
    assert baseline["config_hash"] == cfg.config_hash(), "the baseline is of another config: regenerate it"
    rule = tolerances_for(BASELINE).rule("t2i/R@5")
    # CI's `bench regress --subset clip` passes only with R@5 >= baseline - tolerance: that must meet the target
    assert baseline["metrics"]["t2i/R@5"] - rule.abs >= TARGET_R5
