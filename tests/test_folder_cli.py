"""``--dataset folder`` through the command line: ``bench data check``, ``bench run`` (retrieval
and ``--task i2i``), ``bench feedback``, and every model at tiny size (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from tests.folder_fixtures import folder_rows, write_annotations, write_folder
from tests.real_helpers import SMALL_MODEL

runner = CliRunner()


def check(root: Path, *extra: str):
    return runner.invoke(app, ["data", "check", "--dataset", "folder", "--data-root", str(root), *extra])


def bench(tmp_path: Path, root: Path, *extra: str, command: str = "run", model_args: str = SMALL_MODEL):
    args = [
        command,
        "--dataset",
        "folder",
        "--data-root",
        str(root),
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        model_args,
        "--set",
        "data.batch_size=4",
        *extra,
    ]
    if command == "run":
        args += ["--no-progress", "--set", "eval.measure=false"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def result(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "results" / name).read_text())


def test_data_check_counts_groups_and_corrupt_images(tmp_path):
    write_folder(tmp_path / "ok", fmt="csv", split=True)
    res = check(tmp_path / "ok")
    assert res.exit_code == 0, res.output
    assert "folder: " in res.output and "(layout: csv)" in res.output and "OK" in res.output
    assert "train                 24 images       48 captions  0 missing  0 unreadable" in res.output
    assert "test                   6 images       12 captions" in res.output
    assert "annotations: annotations.csv (csv), 72 rows (captions) of 36 images" in res.output
    assert "split: given for 36 images, hash split for 0" in res.output
    assert "groups: 12 over 36 images (train 8, val 2, test 2)" in res.output
    assert "i2i queries (images with another image of their group in the split): train 24, val 6, test 6" in res.output
    assert "instructions: 12 rows give their own instruction" in res.output
    write_folder(tmp_path / "bad", groups=False, corrupt=4)
    rows = folder_rows(36, groups=False)
    write_annotations(tmp_path / "bad", [r | {"source": "web"} for r in rows])
    res = check(tmp_path / "bad")
    assert res.exit_code == 1, res.output
    assert "unreadable images (1):" in res.output and "img_004.png" in res.output and "PROBLEMS FOUND" in res.output
    assert (
        "hash split for 36" in res.output and "groups: none" in res.output and "ignored columns: source" in res.output
    )


def test_data_check_fails_on_an_empty_split(tmp_path):
    rows = write_folder(tmp_path, split=True)
    write_annotations(tmp_path, [r | {"split": "train" if r["split"] == "val" else r["split"]} for r in rows])
    res = check(tmp_path)
    assert res.exit_code == 1, res.output
    assert "problem: split 'val' is empty: a run that uses it fails" in res.output
    assert res.output.rstrip().endswith("PROBLEMS FOUND: 1 check above failed"), res.output
    assert "runs skip these images" not in res.output


def test_data_check_errors_name_the_line_and_field_exit_2(tmp_path):
    (tmp_path / "annotations.jsonl").write_text(
        '{"image": "a.png", "caption": "x"}\n'
        '{"image": "b.png", "caption": "y", "split": "dev"}\n'
        '{"image": "../c.png", "caption": "z"}\n'
    )
    res = check(tmp_path)
    assert res.exit_code == 2
    assert "2 problems" in res.output and "line 2: field 'split' is 'dev'" in res.output
    assert "line 3: field 'image' must be a path inside the data root" in res.output
    res = check(tmp_path / "absent")
    assert res.exit_code == 2 and "does not exist" in res.output and "annotations.jsonl" in res.output


def test_bench_run_retrieval_then_another_folder_trains_again(tmp_path):
    write_folder(tmp_path / "a", split=True, corrupt=0)
    bench(tmp_path, tmp_path / "a", "--model", "clip", "--epochs", "1")
    r = result(tmp_path, "clip__folder__default.json")
    p = r["provenance"]
    assert p["trained_this_run"] and p["n_gallery_images"] == 6 and r["metrics"]["t2i/n_queries"] == 12
    assert r["data"]["skipped"][0]["image_id"] == "photos/street/img_000.png"
    assert p["annotation_file"] == "annotations.jsonl" and p["groups"] == {"n_groups": 12, "n_grouped_images": 36}
    assert "i2i/R@1" in r["metrics"] and 0 <= r["metrics"]["t2i/R@1"] <= 1
    # the same options on another folder: not the first folder's checkpoint
    rows = folder_rows(36, split=True)
    write_folder(tmp_path / "b", split=True)
    write_annotations(tmp_path / "b", rows[:-2])
    bench(tmp_path, tmp_path / "b", "--model", "clip", "--epochs", "1", "--tag", "b")
    b = result(tmp_path, "clip__folder__b.json")
    assert b["provenance"]["trained_this_run"] and b["provenance"]["checkpoint"] != p["checkpoint"]
    # --skip-existing: the result of folder a is not that of folder b
    res = bench(tmp_path, tmp_path / "b", "--model", "clip", "--epochs", "1", "--skip-existing")
    assert "skipped" not in res.output
    assert result(tmp_path, "clip__folder__default.json")["provenance"]["trained_this_run"] is False  # b's cache
    res = bench(tmp_path, tmp_path / "b", "--model", "clip", "--epochs", "1", "--skip-existing")
    assert "skipped" in res.output


def test_bench_run_i2i_with_groups_and_without(tmp_path):
    write_folder(tmp_path / "g", split=True)
    bench(tmp_path, tmp_path / "g", "--model", "clip", "--task", "i2i", "--epochs", "0")
    r = result(tmp_path, "clip__folder__i2i__default.json")
    assert r["provenance"]["i2i"] == {"protocol": "gallery", "n_queries": 6, "n_gallery": 6}
    assert r["metrics"]["i2i/n_skipped"] == 0 and 0 <= r["metrics"]["i2i/R@1"] <= 1
    write_folder(tmp_path / "n", groups=False)
    bench(tmp_path, tmp_path / "n", "--model", "clip", "--task", "i2i", "--epochs", "0", "--tag", "n")
    r = result(tmp_path, "clip__folder__i2i__n.json")
    assert r["provenance"]["i2i"]["protocol"] == "augmented_view"


def test_bench_feedback_and_a_templates_file(tmp_path):
    write_folder(tmp_path / "f", n_images=45, split=True)
    templates = tmp_path / "templates.txt"
    templates.write_text("# mine\nI want {caption}\n")
    res = bench(
        tmp_path,
        tmp_path / "f",
        "--model",
        "clip",
        "--epochs",
        "0",
        "--rounds",
        "1",
        "--display",
        "2",
        "--set",
        f"data.templates={templates}",
        command="feedback",
    )
    assert "wrote" in res.output
    r = result(tmp_path, "feedback__clip__folder__default.json")
    assert r["protocol"]["n_gallery"] == 9 and r["protocol"]["n_queries"] == 18
    assert r["config"]["data"]["templates"] == ["I want {caption}"]
    transcript = (tmp_path / "results" / "feedback__clip__folder__default.jsonl").read_text().splitlines()
    queries = {json.loads(line).get("query") for line in transcript} - {None}
    assert queries and all(q.startswith(("I want ", "please find picture")) for q in queries)


@pytest.mark.slow
def test_every_model_on_a_folder(tmp_path):
    """blip2 (on a tiny CLIP), ours (on that BLIP2), dynamicvit and crossget (on it too), 1 epoch each."""
    from tests.test_blip2 import TINY_QFORMER

    write_folder(tmp_path / "f", n_images=45, split=True)
    clip_dep = {
        "vision_checkpoint": {
            "train": {"max_epochs": 1},
            "model_args": {"vision_layers": 4, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16},
        }
    }
    blip2_args = TINY_QFORMER | {"itm_max_anchors": 8, "dependency_overrides": clip_dep}
    blip2_dep = {"blip2_checkpoint": {"train": {"max_epochs": 1}, "model_args": blip2_args}}
    args = {
        "blip2": blip2_args,
        "ours": TINY_QFORMER
        | {
            "l_base": 2,
            "l_max": 8,
            "l_init": 4,
            "qscaler_hidden": 16,
            "itm_max_anchors": 8,
            "dependency_overrides": blip2_dep,
        },
        "dynamicvit": {"k_test": 2, "dependency_overrides": blip2_dep},
        "crossget": {"k_test": 2, "dependency_overrides": blip2_dep},
    }
    for model, model_args in args.items():
        bench(
            tmp_path,
            tmp_path / "f",
            "--model",
            model,
            "--epochs",
            "1",
            model_args=f"model_args={json.dumps(model_args)}",
        )
        r = result(tmp_path, f"{model}__folder__default.json")
        assert 0 <= r["metrics"]["t2i/R@5"] <= 1 and r["provenance"]["n_gallery_images"] == 9, model
        bench(
            tmp_path,
            tmp_path / "f",
            "--model",
            model,
            "--epochs",
            "1",
            "--task",
            "i2i",
            model_args=f"model_args={json.dumps(model_args)}",
        )
        assert result(tmp_path, f"{model}__folder__i2i__default.json")["provenance"]["i2i"]["protocol"] == "gallery"
