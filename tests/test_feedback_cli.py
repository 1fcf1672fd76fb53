"""``bench feedback``: clear errors with exit code 2, and end to end on a tiny trained CLIP."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.results import load_result

runner = CliRunner()
SMALL = '{"n_train": 96, "n_val": 16, "n_test": 40}'
SMALL_MODEL = 'model_args={"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}'


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "everything"], "--mode must be one of all, refresh, llm"),
        (["--llm", "gpt4"], "unknown backend 'gpt4'"),
        (["--llm", "openai:not-a-url"], "openai:<base url>"),
        (["--feedback-set", "refresh.w_nss=1"], "feedback.refresh.w_nss"),
        (["--feedback-set", "similarity.top_k=0"], "feedback.similarity.top_k must be null or an integer in [1, 4096]"),
        (["--feedback-set", "similarity.row_chunk=0"], "feedback.similarity.row_chunk"),
        (["--rounds", "0"], "--rounds"),
        (["--model", "clipp"], "unknown model 'clipp'"),
    ],
)
def test_bad_input_exits_2_naming_the_option(tmp_path, args, message):
    res = runner.invoke(app, ["feedback", "--results-dir", str(tmp_path / "r"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "r").exists()


def test_missing_hf_model_exits_2_before_any_work(tmp_path):
    res = runner.invoke(
        app,
        [
            "feedback",
            "--model",
            "clip",
            "--llm",
            f"hf:{tmp_path / 'nothing'}",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 2 and "--llm" in res.output and "local files only" in res.output
    assert not (tmp_path / "cache").exists()  # nothing generated or trained


@pytest.mark.slow
def test_feedback_end_to_end_on_a_tiny_clip(tmp_path):
    args = [
        "feedback",
        "--model",
        "clip",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--rounds",
        "2",
        "--display",
        "3",
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        f"data.options={SMALL}",
        "--set",
        "data.batch_size=32",
        "--set",
        SMALL_MODEL,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "not an LLM" in res.output and "Hits@5 by round" in res.output
    assert "95 % bootstrap intervals over queries" in res.output and "round 2 llm - exclude: ΔHits@5 =" in res.output
    path = tmp_path / "results" / "feedback__clip__synthetic__default.json"
    r = load_result(path)
    assert r["task"] == "feedback" and r["protocol"]["rounds"] == 2 and r["protocol"]["display"] == 3
    assert r["protocol"]["rank_base"] == 1 and r["protocol"]["llm"]["is_llm"] is False
    assert r["protocol"]["n_queries"] == 200 and r["protocol"]["n_gallery"] == 40
    assert r["protocol"]["image_similarity"] == {
        "reads": "rows",
        "top_k": None,
        "row_chunk": 256,
        "row_cache_mb": 1024.0,
    }
    assert r["protocol"]["user"]["model"] == "graded" and r["protocol"]["user"]["closeness"] == "constraint_share"
    assert set(r["user_marks"]["refresh"]) == {"ps", "ns", "unsure", "match"}
    assert r["protocol"]["feedback_config"]["similarity"] == {"top_k": None, "row_chunk": None, "row_cache_mb": 1024.0}
    assert 0 < r["provenance"]["image_image_rows_computed"] <= 40
    assert set(r["per_round"]) == {"none", "exclude", "refresh", "llm"}
    for table in r["per_round"].values():
        assert table["round"] == [0, 1, 2] and len(table["Hits@5"]) == 3 and len(table["BRI"]) == 3
    assert r["metrics"]["llm/round2/Hits@5"] == r["per_round"]["llm"]["Hits@5"][2]
    assert len(r["per_query"]["none"]) == 3 and len(r["per_query"]["none"][0]) == 200
    assert r["fallbacks"]["llm_rounds"] == 400 and r["environment"]["packages"]["torch"]
    lines = (tmp_path / "results" / "feedback__clip__synthetic__default.jsonl").read_text().splitlines()
    assert len(lines) == 200 and json.loads(lines[0])["arms"]["llm"]["rounds"][0]["round"] == 1
    # round 0 equals what `bench run` reports for the same cached model
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--epochs",
            "1",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--set",
            f"data.options={SMALL}",
            "--set",
            "data.batch_size=32",
            "--set",
            SMALL_MODEL,
        ],
    )
    assert res.exit_code == 0, res.output
    run = load_result(tmp_path / "results" / "clip__synthetic__default.json")
    assert run["provenance"]["trained_this_run"] is False
    assert r["per_query"]["none"][0] == run["per_query"]["t2i/rank"]
    # a partial run gets its own tag: the whole run's files stay as they are
    before = {p.name: p.read_bytes() for p in (tmp_path / "results").glob("feedback__*")}
    res = runner.invoke(app, [*args, "--max-queries", "7"])
    assert res.exit_code == 0, res.output
    part = load_result(tmp_path / "results" / "feedback__clip__synthetic__first7.json")
    assert part["tag"] == "first7" and part["protocol"]["n_queries"] == 7
    assert {p.name: p.read_bytes() for p in (tmp_path / "results").glob("feedback__*__default.*")} == before
    # a gallery at or above eval.memmap_min_mb is mapped from a scratch file: the same run, nothing left on disk
    res = runner.invoke(app, [*args, "--tag", "spilled", "--set", "eval.memmap_min_mb=0"])
    assert res.exit_code == 0, res.output
    spilled = load_result(tmp_path / "results" / "feedback__clip__synthetic__spilled.json")
    assert spilled["per_query"] == r["per_query"] and spilled["metrics"] == r["metrics"]
    assert spilled["config_hash"] == r["config_hash"]
    assert list((tmp_path / "cache" / "eval-spill").iterdir()) == []
