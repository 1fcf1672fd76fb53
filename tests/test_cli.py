"""The ``bench`` CLI: fast help, clear errors with exit code 2, report building."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from benchmark.cli import app

runner = CliRunner()


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); from benchmark.cli import app; "
        "assert 'torch' not in sys.modules, 'torch imported at CLI start-up'; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "benchmark.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "run" in res.stdout and "report" in res.stdout
    assert time.perf_counter() - t < 5  # generous for a loaded CI machine; ~0.3 s here


def test_unknown_model_and_dataset_exit_2_listing_valid_names():
    res = runner.invoke(app, ["run", "--model", "clipp"])
    assert res.exit_code == 2
    assert "unknown model 'clipp'" in res.output and "clip" in res.output
    res = runner.invoke(app, ["run", "--dataset", "cocoa"])
    assert res.exit_code == 2 and "synthetic" in res.output and "coco" in res.output


def test_absent_real_dataset_names_layout_and_source(tmp_path):
    res = runner.invoke(
        app,
        [
            "run",
            "--dataset",
            "coco",
            "--data-root",
            str(tmp_path / "nowhere"),
            "--results-dir",
            str(tmp_path / "r"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 2
    assert "dataset_coco.json" in res.output and "coco_karpathy" in res.output and "cocodataset.org" in res.output
    res = runner.invoke(app, ["run", "--dataset", "medpix", "--results-dir", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and "--data-root" in res.output and "Descriptions.json" in res.output
    assert not (tmp_path / "r").exists()


def test_bad_option_exit_2(tmp_path):
    res = runner.invoke(app, ["run", "--set", "train.max_epochz=1", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "train.max_epochz" in res.output
    res = runner.invoke(app, ["run", "--size", "full", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "model_args.pretrained" in res.output


def test_list_names_every_registered_entry():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("clip", "synthetic", "coco", "medpix", "rsicap"):
        assert name in res.output


def _result(model: str, tag: str, r5: float) -> dict:
    return {
        "schema": 1,
        "model": model,
        "dataset": "synthetic",
        "size": "tiny",
        "tag": tag,
        "config": {},
        "config_hash": "x",
        "seed": 0,
        "metrics": {"t2i/R@5": r5, "t2i/MRR": 0.25},
        "environment": {},
        "provenance": {"n_queries": 10},
        "timings": {"total_s": 1.5},
    }


def test_report_table_escapes_text(tmp_path):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "a.json").write_text(json.dumps(_result("clip", "base", 0.5)))
    (res_dir / "b.json").write_text(json.dumps(_result("evil|model<script>", "x_y", 0.25)))
    res = runner.invoke(app, ["report", "--results-dir", str(res_dir), "--out-dir", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "rep" / "results.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + 2 results
    assert all(line.count(" | ") == rows[0].count(" | ") for line in rows)  # the pipe did not add a column
    assert "evil\\|model&lt;script&gt;" in text and "0.5000" in text and "Sim:" in text


def test_report_rejects_broken_result_file(tmp_path):
    res_dir = tmp_path / "results"
    res_dir.mkdir()
    (res_dir / "broken.json").write_text('{"model": "clip"}')
    res = runner.invoke(app, ["report", "--results-dir", str(res_dir), "--out-dir", str(tmp_path / "rep")])
    assert res.exit_code == 2 and "broken.json" in res.output and "missing field" in res.output
