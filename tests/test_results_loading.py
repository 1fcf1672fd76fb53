"""Loading result files: the tidy DataFrame of ``load_results``, and every bad file or folder
refused with a clear error naming the file and the field (``bench report`` exits 2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.results import (
    FRAME_COLUMNS,
    ResultFileError,
    load_result,
    load_result_files,
    load_results,
    results_frame,
)
from tests.reporting_fixtures import ranks_with_hit_rate, write_result, write_speed_result

runner = CliRunner()
N = 40


def _result(tmp_path, **kw):
    rng = np.random.default_rng(0)
    return write_result(tmp_path, ranks=ranks_with_hit_rate(rng, N, 0.4), sims=rng.random(N), **kw)


def test_load_results_is_one_tidy_row_per_run_and_metric(tmp_path):
    a = _result(tmp_path, model="clip", extra_metrics={"gflops/total": 0.5, "i2i/MRR": None})
    b = _result(tmp_path, model="ours", tag="x", seed=3)
    speed = write_speed_result(tmp_path, rounds=[(100.0, 120.0), (90.0, 110.0)])
    frame = load_results(tmp_path)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    files = {p.name: json.loads(p.read_text()) for p in (a, b, speed)}
    assert len(frame) == sum(len(r["metrics"]) for r in files.values())
    for name, r in files.items():
        rows = frame[frame["file"] == name]
        for column in ("model", "dataset", "size", "tag", "seed"):
            assert set(rows[column]) == {r[column]}
        assert set(rows["task"]) == {r.get("task", "retrieval")}
        stored = {k: (math.nan if v is None else float(v)) for k, v in r["metrics"].items()}
        got = dict(zip(rows["metric"], rows["value"], strict=True))
        assert got.keys() == stored.keys()
        assert all(got[k] == v or (math.isnan(got[k]) and math.isnan(v)) for k, v in stored.items())
    assert frame.loc[(frame["file"] == a.name) & (frame["metric"] == "i2i/MRR"), "value"].isna().all()
    assert frame["seed"].dtype == np.int64 and frame["value"].dtype == np.float64
    # task filter; and a pivot gives one row per run, as users expect of such a frame
    assert set(load_results(tmp_path, task="speed")["file"]) == {speed.name}
    wide = frame[frame["task"] == "retrieval"].pivot(index="file", columns="metric", values="value")
    assert wide.loc[a.name, "t2i/R@5"] == files[a.name]["metrics"]["t2i/R@5"]


def test_an_empty_folder_gives_an_empty_frame_with_the_columns(tmp_path):
    frame = results_frame([])
    assert frame.empty and list(frame.columns) == list(FRAME_COLUMNS)
    assert load_results(tmp_path).empty


def test_a_missing_or_non_folder_results_dir_is_an_error(tmp_path):
    with pytest.raises(ResultFileError, match="missing: results folder does not exist"):
        load_result_files(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ResultFileError, match="f: results folder is not a folder"):
        load_results(tmp_path / "f")


def _set(path, dotted, value):
    data = json.loads(path.read_text())
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    path.write_text(json.dumps(data))


def _metric(key, value):
    return lambda p: _set_metric(p, key, value)


def _set_metric(path, key, value):
    data = json.loads(path.read_text())
    data["metrics"][key] = value
    path.write_text(json.dumps(data))  # json writes inf and nan as Infinity and NaN, as a careless tool would


def _raw(text_or_bytes):
    def write(path):
        if isinstance(text_or_bytes, bytes):
            path.write_bytes(text_or_bytes)
        else:
            path.write_text(text_or_bytes)

    return write


def _per_query(key, index, value):
    def mutate(path):
        data = json.loads(path.read_text())
        data["per_query"][key][index] = value
        path.write_text(json.dumps(data))

    return mutate


BAD_FILES = [
    (lambda p: _set(p, "schema", 2), "field schema: unknown schema version 2"),
    (lambda p: _set(p, "schema", "1"), "field schema: unknown schema version '1'"),
    (_metric("t2i/R@1", 7.5), r"field metrics\.t2i/R@1 = 7\.5 is out of range \(expected in \[0, 1\]\)"),
    (_metric("t2i/R@5", float("inf")), r"Infinity is not a number JSON allows"),  # the safe reader
    (_metric("t2i/MRR", float("nan")), r"NaN is not a number JSON allows"),
    (_metric("t2i/R@5", "0.5"), r"field metrics\.t2i/R@5 must be a number or null, got '0\.5'"),
    (_metric("qlen/spearman_complexity", -1.5), r"field metrics\.qlen/spearman_complexity = -1\.5 is out of range"),
    (_metric("t2i/mean_rank", -3.0), r"field metrics\.t2i/mean_rank = -3\.0 is out of range \(expected >= 1\)"),
    (_metric("gflops/total", -0.1), r"field metrics\.gflops/total = -0\.1 is out of range"),
    (_metric("t2i/R@5", True), r"field metrics\.t2i/R@5 must be a number or null, got True"),
    (_per_query("t2i/rank", 3, -2), r"field per_query\.t2i/rank\[3\] = -2: expected integer ranks >= 0"),
    (_per_query("t2i/rank", 0, 1.5), r"field per_query\.t2i/rank\[0\] = 1\.5"),
    (_per_query("t2i/sim", 1, "x"), r"field per_query\.t2i/sim\[1\] = 'x': expected finite similarities or null"),
    (lambda p: _set(p, "seed", -1), "field seed must be an integer >= 0"),
    (lambda p: _set(p, "model", ""), "field model must be a non-empty string"),
    (lambda p: _set(p, "metrics", [1, 2]), "field metrics must be an object"),
    (_raw(b'{"schema": 1, "model": "caf\xe9"}'), "not UTF-8 text"),
    (_raw("[" * 100_000 + "]" * 100_000), "nested deeper than 200 levels"),
    (_raw('{"schema": ' + "9" * 5000 + "}"), "a number too large to read"),
    (_raw("{not json"), "not valid JSON"),
    (_raw("[1, 2]"), "a result file holds a JSON object"),
]


@pytest.mark.parametrize("mutate, message", BAD_FILES)
def test_a_bad_result_file_is_refused_naming_the_file_and_field(tmp_path, mutate, message):
    path = _result(tmp_path, model="clip")
    load_result(path)  # valid as written
    mutate(path)
    with pytest.raises(ResultFileError, match=r"clip__synthetic__default\.json: .*" + message) as e:
        load_result_files(tmp_path)
    assert "Traceback" not in str(e.value)


def test_a_directory_named_like_a_result_file_is_refused(tmp_path):
    _result(tmp_path, model="clip")
    (tmp_path / "zz__synthetic__default.json").mkdir()
    with pytest.raises(ResultFileError, match=r"zz__synthetic__default\.json: is a directory, expected a JSON file"):
        load_result_files(tmp_path)


def test_every_committed_result_file_passes_the_checks():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "results"
    files = [
        p
        for d in ("reference", "reference/tasks", "baseline")
        for p in sorted((root / d).glob("*.json"))
        if p.name != "tolerances.json"
    ]
    assert len(files) >= 10
    for p in files:
        load_result(p)


def _report(results_dir, out_dir):
    return runner.invoke(app, ["report", "--results-dir", str(results_dir), "--out-dir", str(out_dir)])


def test_bench_report_on_a_missing_folder_exits_2_and_writes_nothing(tmp_path):
    res = _report(tmp_path / "missing", tmp_path / "rep")
    assert res.exit_code == 2, res.output
    assert "missing: results folder does not exist" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "mutate, message",
    [BAD_FILES[0], BAD_FILES[2], BAD_FILES[3], BAD_FILES[10], BAD_FILES[16], BAD_FILES[17], BAD_FILES[18]],
)
def test_bench_report_exits_2_on_a_bad_file_naming_it(tmp_path, mutate, message):
    path = _result(tmp_path / "results", model="clip")
    mutate(path)
    res = _report(tmp_path / "results", tmp_path / "rep")
    assert res.exit_code == 2, res.output
    assert "clip__synthetic__default.json" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "rep").exists()  # validated before anything is written


def test_results_csv_is_the_tidy_frame(tmp_path):
    from benchmark.reporting.export import PARQUET_NAME, parquet_available, write_frame

    _result(tmp_path / "results", model="clip", extra_metrics={"i2i/MRR": None})
    _result(tmp_path / "results", model="blip2", tag='a,b"c')
    res = _report(tmp_path / "results", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    frame = load_results(tmp_path / "results")
    back = pd.read_csv(tmp_path / "rep" / "results.csv", keep_default_na=False, na_values={"value": [""]})
    assert list(back.columns) == list(FRAME_COLUMNS) and len(back) == len(frame)
    assert back["tag"].tolist() == frame["tag"].tolist() and back["metric"].tolist() == frame["metric"].tolist()
    np.testing.assert_array_equal(back["value"].to_numpy(), frame["value"].to_numpy())  # exact round trip, NaN kept
    # parquet exactly when pyarrow is importable (absent from this venv: then no parquet file)
    paths = write_frame(frame, tmp_path / "out")
    assert ((tmp_path / "out" / PARQUET_NAME) in paths) == parquet_available()
    if parquet_available():
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / PARQUET_NAME), frame)


def test_sim_is_the_models_raw_score_and_only_needs_to_be_finite(tmp_path):
    """Sim is the mean raw score of the model's own scoring: a model with unbounded scores is valid."""
    path = _result(tmp_path, model="clip", extra_metrics={"t2i/Sim": 3.5})
    _per_query("t2i/sim", 0, -7.25)(path)
    assert load_result(path)["metrics"]["t2i/Sim"] == 3.5
