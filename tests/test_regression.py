"""``bench regress``: tolerances, regression detection on result files, baselines, determinism."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.regression.compare import compare_metrics
from benchmark.regression.tolerances import load_tolerances
from benchmark.results import SCHEMA_VERSION, atomic_write_json, load_result

runner = CliRunner()
NAME = "clip__synthetic__regress.json"
METRICS = {
    "t2i/R@5": 0.40,
    "t2i/MRR": 0.25,
    "t2i/Sim": 0.30,
    "t2i/mean_rank": 12.0,
    "t2i/n_queries": 5000,
    "gflops/total": 0.0123,
    "qlen/mean": 17.8,
    "throughput_img_s": 900.0,
    "memory_mb": 512.0,
    "qlen/spearman_complexity": None,
}


def _result(metrics: dict, model: str = "clip") -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "model": model,
        "dataset": "synthetic",
        "size": "tiny",
        "tag": "regress",
        "task": "retrieval",
        "seed": 0,
        "config": {"model": model},
        "config_hash": "abc",
        "metrics": metrics,
        "environment": {"packages": {"torch": "2.13.0"}, "platform": "linux", "device": "cpu"},
        "provenance": {},
        "timings": {},
    }


def _dirs(tmp_path, new_metrics: dict, old_metrics: dict | None = None):
    base, new = tmp_path / "baseline", tmp_path / "new"
    atomic_write_json(base / NAME, _result(old_metrics or METRICS))
    atomic_write_json(new / NAME, _result(new_metrics))
    return base, new


def _regress(base, new, *extra: str):
    return runner.invoke(app, ["regress", "--baseline-dir", str(base), "--from-results", str(new), *extra])


def test_same_metrics_pass(tmp_path):
    res = _regress(*_dirs(tmp_path, METRICS))
    assert res.exit_code == 0, res.output
    assert "0 regression(s)" in res.output and "t2i/R@5" in res.output and "REGRESSION" not in res.output


def test_worse_beyond_tolerance_fails_within_passes(tmp_path):
    res = _regress(*_dirs(tmp_path / "a", METRICS | {"t2i/R@5": 0.385}))  # shipped quality tolerance: 0.01
    assert res.exit_code == 1 and "REGRESSION" in res.output and "1 regression(s)" in res.output
    res = _regress(*_dirs(tmp_path / "b", METRICS | {"t2i/R@5": 0.391, "t2i/mean_rank": 12.9}))
    assert res.exit_code == 0, res.output


def test_direction_and_ignored_timings(tmp_path):
    # better quality and a worse mean rank within tolerance; time and memory changes are ignored
    res = _regress(*_dirs(tmp_path / "a", METRICS | {"t2i/MRR": 0.30, "throughput_img_s": 10.0, "memory_mb": 9e4}))
    assert res.exit_code == 0, res.output
    assert "improved" in res.output and "ignored" in res.output
    # a higher mean rank is worse; FLOPs may not move at all, in either direction
    for change in ({"t2i/mean_rank": 14.0}, {"gflops/total": 0.0122}, {"t2i/n_queries": 4999}):
        res = _regress(*_dirs(tmp_path / next(iter(change)).replace("/", "_"), METRICS | change))
        assert res.exit_code == 1 and "REGRESSION" in res.output, change


def test_missing_metric_and_null_values(tmp_path):
    metrics = {k: v for k, v in METRICS.items() if k != "t2i/Sim"}
    res = _regress(*_dirs(tmp_path / "a", metrics))
    assert res.exit_code == 1 and "MISSING" in res.output
    res = _regress(*_dirs(tmp_path / "b", METRICS | {"t2i/MRR": None}))  # a value that became NaN
    assert res.exit_code == 1
    res = _regress(*_dirs(tmp_path / "c", METRICS | {"qlen/hist_8": 0.5}))  # a new key is reported, not failed
    assert res.exit_code == 0 and " new" in res.output


def test_missing_baseline_says_how_to_create_it(tmp_path):
    new = tmp_path / "new"
    atomic_write_json(new / NAME, _result(METRICS))
    res = _regress(tmp_path / "baseline", new)
    assert res.exit_code == 2 and NAME in res.output and "bench regress --update" in res.output


def test_update_writes_the_baseline_then_compares(tmp_path):
    new = tmp_path / "new"
    atomic_write_json(new / NAME, _result(METRICS))
    res = _regress(tmp_path / "baseline", new, "--update")
    assert res.exit_code == 0, res.output
    assert load_result(tmp_path / "baseline" / NAME)["metrics"] == METRICS
    assert load_tolerances(tmp_path / "baseline" / "tolerances.json").rules  # the shipped rules, now editable
    assert _regress(tmp_path / "baseline", new).exit_code == 0


def test_subset_filters_and_unknown_models_are_refused(tmp_path):
    base, new = _dirs(tmp_path, METRICS)
    atomic_write_json(new / "blip2__synthetic__regress.json", _result(METRICS, "blip2"))  # no baseline for it
    assert _regress(base, new).exit_code == 2
    assert _regress(base, new, "--subset", "clip").exit_code == 0
    res = _regress(base, new, "--subset", "clip,nosuch")
    assert res.exit_code == 2 and "nosuch" in res.output and "valid models" in res.output


def test_bad_tolerances_file_names_the_rule_and_field(tmp_path):
    base, new = _dirs(tmp_path, METRICS)
    (base / "tolerances.json").write_text(json.dumps({"rules": [{"pattern": "*", "abs": 0.1, "better": "up"}]}))
    res = _regress(base, new)
    assert res.exit_code == 2 and "tolerances.json: rules[0]" in res.output and "better" in res.output
    with pytest.raises(ConfigError, match="either 'abs'"):
        load_tolerances_from(tmp_path, {"rules": [{"pattern": "*"}]})


def load_tolerances_from(tmp_path, data: dict):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    return load_tolerances(path)


def test_first_matching_rule_decides(tmp_path):
    tol = load_tolerances_from(
        tmp_path, {"rules": [{"pattern": "t2i/R@*", "abs": 0.5, "better": "higher"}, {"pattern": "*", "abs": 0.0}]}
    )
    rows = {
        r.key: r.status
        for r in compare_metrics(
            "x", {"t2i/R@5": 0.5, "i2t/R@5": 0.5, "z": 1.0}, {"t2i/R@5": 0.1, "i2t/R@5": 0.6, "z": 1.0}, tol
        )
    }
    assert rows == {"t2i/R@5": "ok", "i2t/R@5": "REGRESSION", "z": "ok"}


def test_tiny_suite_is_deterministic_and_passes_against_itself(tmp_path):
    """Two runs of the same tiny config from fresh caches give identical metrics (seeded, deterministic training)."""
    small = '{"n_train": 64, "n_val": 16, "n_test": 24}'
    model = '{"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}'
    opts = [
        "--subset",
        "clip",
        "--set",
        f"data.options={small}",
        "--set",
        "data.batch_size=32",
        "--set",
        "train.max_epochs=2",
        "--set",
        f"model_args={model}",
        "--set",
        "eval.measure=false",
    ]
    for name in ("first", "second"):
        res = runner.invoke(app, ["regress", "--update", "--baseline-dir", str(tmp_path / name), *opts])
        assert res.exit_code == 0, res.output
    first, second = (load_result(tmp_path / n / NAME) for n in ("first", "second"))
    assert first["metrics"] == second["metrics"] and first["per_query"] == second["per_query"]
    assert first["config_hash"] == second["config_hash"] and first["provenance"]["trained_this_run"] is True
    res = _regress(tmp_path / "first", tmp_path / "second", "--all")
    assert res.exit_code == 0 and "0 regression(s)" in res.output and "improved" not in res.output
