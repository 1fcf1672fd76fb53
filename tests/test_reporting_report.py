"""``bench report`` end to end: every file written (atomically), figures non-empty or skipped
with a note, options recorded and validated, bad result files refused with exit code 2."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import EvalConfig
from benchmark.reporting.pareto import pareto_front
from benchmark.results import load_result
from tests.reporting_fixtures import ranks_with_hit_rate, write_result
from tests.test_run_e2e import SMALL, SMALL_MODEL

runner = CliRunner()
N = 200
REPORTS = ("results.md", "comparison.md", "comparison.tex", "ablations.md", "ablations.tex", "claims.md")
FIGURES = ("qlen_by_complexity", "r5_vs_gflops", "throughput_vs_qlen")
# cost measurement (seconds) is not what this test is about
NO_MEASURE = ["--set", "eval.measure=false"] if "measure" in {f.name for f in fields(EvalConfig)} else []


def _full_set(results_dir):
    rng = np.random.default_rng(0)
    ranks = ranks_with_hit_rate(rng, N, 0.3)
    complexity = np.arange(N) % 5 + 1
    cost = {"clip": (1.0, 300.0), "blip2": (3.0, 50.0), "ours": (2.5, 60.0)}
    for model, (gflops, thr) in cost.items():
        lengths = 8 + 4 * complexity + rng.integers(0, 3, N) if model == "ours" else None
        write_result(
            results_dir,
            model=model,
            ranks=np.maximum(1, ranks - rng.integers(0, 3, N)),
            sims=rng.random(N),
            lengths=lengths,
            complexity=complexity,
            extra_metrics={"gflops/total": gflops, "throughput_img_s": thr, "memory_mb": 100 * gflops},
        )
    write_result(
        results_dir,
        model="ours",
        tag="no-qs",
        ranks=ranks,
        sims=rng.random(N),
        lengths=np.full(N, 32),
        complexity=complexity,
        model_args={"qscaler": False},
        extra_metrics={"gflops/total": 2.9, "throughput_img_s": 55.0},
    )


def _report(results_dir, out_dir, *extra: str):
    return runner.invoke(app, ["report", "--results-dir", str(results_dir), "--out-dir", str(out_dir), *extra])


def test_report_writes_every_file_and_records_its_options(tmp_path):
    _full_set(tmp_path / "results")
    res = _report(tmp_path / "results", tmp_path / "rep", "--bootstrap", "200", "--seed", "7")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    for name in REPORTS:
        text = (out / name).read_text()
        assert len(text) > 100, name
    for name in ("comparison.md", "ablations.md", "claims.md"):
        assert "B = 200 resamples, seed 7" in (out / name).read_text()
    for stem in FIGURES:
        png, pdf = (out / "figures" / f"{stem}.png").read_bytes(), (out / "figures" / f"{stem}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 2000 and pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave nothing behind
    claims = (out / "claims.md").read_text()
    assert "| More complex instructions get more queries. | the paper's | synthetic (tiny) | **supported** |" in claims
    assert "ours\\_\\_synthetic\\_\\_no-qs.json" in (out / "ablations.md").read_text()


def test_report_without_figure_data_skips_figures_with_a_note(tmp_path):
    rng = np.random.default_rng(1)
    write_result(tmp_path / "results", model="clip", ranks=ranks_with_hit_rate(rng, N, 0.3), sims=rng.random(N))
    res = _report(tmp_path / "results", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    for stem in FIGURES:
        assert f"figure {stem} skipped" in res.output
        assert not (tmp_path / "rep" / "figures" / f"{stem}.png").exists()
    assert "not tested" in (tmp_path / "rep" / "claims.md").read_text()


def test_report_on_an_empty_folder_still_writes_the_reports(tmp_path):
    (tmp_path / "results").mkdir()
    res = _report(tmp_path / "results", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    assert "No result files" in (tmp_path / "rep" / "comparison.md").read_text()
    assert "With QScaler" not in (tmp_path / "rep" / "comparison.md").read_text()
    assert "17.80" in (tmp_path / "rep" / "ablations.md").read_text()  # the paper's table, as reference


def test_report_refuses_bad_options_and_bad_per_query_arrays(tmp_path):
    rng = np.random.default_rng(2)
    path = write_result(tmp_path / "results", model="clip", ranks=ranks_with_hit_rate(rng, N, 0.3), sims=rng.random(N))
    res = _report(tmp_path / "results", tmp_path / "rep", "--bootstrap", "5")
    assert res.exit_code == 2 and "--bootstrap must be an integer >= 100" in res.output
    data = json.loads(path.read_text())
    data["per_query"]["t2i/sim"] = data["per_query"]["t2i/sim"][:-1]
    path.write_text(json.dumps(data))
    res = _report(tmp_path / "results", tmp_path / "rep")
    assert res.exit_code == 2 and "clip__synthetic__default.json: per_query.t2i/sim has 199 entries" in res.output


def test_pareto_front_keeps_the_undominated_points():
    points = [(1.0, 0.2), (2.0, 0.5), (3.0, 0.4), (2.0, 0.3), (4.0, 0.6)]
    assert pareto_front(points) == [0, 1, 4]


def test_report_from_a_real_run(tmp_path):
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--dataset",
            "synthetic",
            "--epochs",
            "0",
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
            *NO_MEASURE,
        ],
    )
    assert res.exit_code == 0, res.output
    res = _report(tmp_path / "results", tmp_path / "rep", "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    r5 = load_result(tmp_path / "results" / "clip__synthetic__default.json")["metrics"]["t2i/R@5"]
    text = (tmp_path / "rep" / "comparison.md").read_text()
    section = text[text.index("### Model comparison on synthetic") :]
    row = next(line for line in section.splitlines() if line.startswith("| clip | tiny | default | "))
    cell = row.split(" | ")[4]  # Model, Size, Tag, Sim, R@5
    value, lo, hi = (
        float(x) for x in cell.replace("**", "").replace("[", "").replace("]", "").replace(",", "").split()
    )
    assert value == round(r5, 4) and lo <= value <= hi
