"""Result files are written atomically and never half-written."""

from __future__ import annotations

import json

import pytest

from benchmark.environment import environment
from benchmark.results import ResultFileError, atomic_write_json, load_result


def test_atomic_write_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_environment_records_versions_threads_and_device():
    env = environment()
    assert env["packages"]["torch"] and env["torch_num_threads"] >= 1 and env["device"] in ("cpu", "cuda")
    assert "git" in env and "python" in env


def test_load_result_names_missing_fields(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"model": "clip"}))
    with pytest.raises(ResultFileError, match="x.json: missing field"):
        load_result(p)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"metrics": {"i2i/MRR": float("nan"), "x": [1.0, float("inf")]}})
    assert json.loads(path.read_text()) == {"metrics": {"i2i/MRR": None, "x": [1.0, None]}}
