"""``bench run`` end to end on a small SynthScenes: train, cache, evaluate, record, skip."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmark.cli import app

runner = CliRunner()
SMALL = '{"n_train": 96, "n_val": 16, "n_test": 40}'
SMALL_MODEL = [
    'model_args={"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16}'
]


def _run(tmp_path, *extra: str):
    args = [
        "run",
        "--model",
        "clip",
        "--dataset",
        "synthetic",
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
        SMALL_MODEL[0],
        "--set",
        "eval.measure=false",
        *extra,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_run_writes_a_complete_result_file(tmp_path):
    _run(tmp_path)
    path = tmp_path / "results" / "clip__synthetic__default.json"
    r = json.loads(path.read_text())
    assert (r["model"], r["dataset"], r["size"], r["seed"]) == ("clip", "synthetic", "tiny", 0)
    for d in ("t2i", "i2t"):
        for m in ("R@1", "R@5", "R@10", "MRR", "Sim"):
            assert 0.0 <= r["metrics"][f"{d}/{m}"] <= 1.0 or m == "Sim"
    assert r["metrics"]["t2i/n_queries"] == 40 * 5 and r["provenance"]["n_gallery_images"] == 40
    assert len(r["provenance"]["annotations_sha256"]) == 64 and r["provenance"]["split"] == "test"
    assert r["config"]["train"]["max_epochs"] == 1 and r["config"]["data"]["options"]["n_train"] == 96
    env = r["environment"]
    assert env["packages"]["torch"] and env["torch_num_threads"] >= 1 and env["device"] == "cpu"
    assert r["timings"]["train_s"] > 0 and r["data"]["skipped"] == []
    assert len(r["per_query"]["t2i/rank"]) == 200 and len(r["per_query"]["complexity"]) == 200
    assert r["provenance"]["trained_this_run"] is True


def test_checkpoint_reused_retrain_and_skip_existing(tmp_path):
    _run(tmp_path)
    path = tmp_path / "results" / "clip__synthetic__default.json"
    first = json.loads(path.read_text())
    _run(tmp_path, "--tag", "again")  # same training config: the cached checkpoint is loaded
    again = json.loads((tmp_path / "results" / "clip__synthetic__again.json").read_text())
    assert again["provenance"]["trained_this_run"] is False and "train_s" not in again["timings"]
    assert again["metrics"] == first["metrics"]  # same weights, same data: same numbers
    res = _run(tmp_path, "--skip-existing")
    assert "skipped" in res.output
    assert json.loads(path.read_text()) == first  # untouched
    # a changed model default (same run config) makes the stored result stale: it runs again
    path.write_text(json.dumps(first | {"model_config": first["model_config"] | {"embed_dim": 999}}))
    res = _run(tmp_path, "--skip-existing")
    assert "skipped" not in res.output
    assert json.loads(path.read_text())["model_config"] == first["model_config"]
    _run(tmp_path, "--retrain", "--tag", "retrained")
    retrained = json.loads((tmp_path / "results" / "clip__synthetic__retrained.json").read_text())
    assert retrained["provenance"]["trained_this_run"] is True
    assert retrained["metrics"] == first["metrics"]  # deterministic training: same numbers again


def test_failed_run_leaves_existing_result_untouched(tmp_path):
    _run(tmp_path)
    path = tmp_path / "results" / "clip__synthetic__default.json"
    before = path.read_bytes()
    res = runner.invoke(app, ["run", "--set", "eval.ks=[0]", "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 2 and "eval.ks" in res.output
    assert path.read_bytes() == before


@pytest.mark.slow
def test_default_run_reaches_the_target(tmp_path):
    """The README's main job at default size: t2i/R@5 >= 0.3 (takes ~2-3 minutes)."""
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--dataset",
            "synthetic",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "results" / "clip__synthetic__default.json").read_text())
    assert r["metrics"]["t2i/R@5"] >= 0.3, r["metrics"]


def test_checkpoint_key_covers_model_defaults_but_not_dependency_paths(tmp_path):
    from dataclasses import replace

    from benchmark.config import build_run_config, model_defaults
    from benchmark.store import checkpoint_dir
    from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval

    cfg = build_run_config(model_defaults("ours"), {"cache_dir": str(tmp_path)})
    base = IdqConfig(blip2_checkpoint="/cache/a/blip2__x")
    key = checkpoint_dir(cfg, None, base, IdqFormerRetrieval)
    # the dependency's path (it lives in a cache folder) is not part of the key ...
    assert checkpoint_dir(cfg, None, replace(base, blip2_checkpoint="/elsewhere/blip2__x"), IdqFormerRetrieval) == key
    # ... but any other resolved field is, defaults included: a changed default trains anew
    assert checkpoint_dir(cfg, None, replace(base, l_base=3), IdqFormerRetrieval) != key


def test_dependency_note_names_the_inherited_settings_that_select_another_checkpoint():
    """``--set train.num_threads=1`` is inherited by the dependencies (part of their training
    hash), so the note that announces their training names it; defaults are not listed."""
    from benchmark.config import build_run_config, model_defaults
    from benchmark.store import dependency_config, inherited_settings_note

    plain = build_run_config(model_defaults("ours"), {})
    one = build_run_config(model_defaults("ours"), {"train": {"num_threads": 1}})
    assert inherited_settings_note(dependency_config(plain, "blip2")) == ""
    note = inherited_settings_note(dependency_config(one, "blip2"))
    assert note == "; inherited from this run: train.num_threads=1"
    assert dependency_config(one, "blip2").training_hash() != dependency_config(plain, "blip2").training_hash()
