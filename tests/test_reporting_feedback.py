"""``bench report`` on feedback result files: per-round tables with intervals, paired differences
to exclude, convergence plots, validation; and the per-query series the intervals rest on."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.feedback import metrics
from benchmark.reporting.bootstrap import mean_interval, paired_difference
from benchmark.reporting.build import write_reports
from benchmark.reporting.feedback_runs import feedback_run
from benchmark.reporting.feedback_stats import describe, feedback_stats
from benchmark.reporting.options import ReportOptions
from benchmark.results import ResultFileError, load_result
from tests.reporting_fixtures import ranks_with_hit_rate, write_feedback_result, write_result

runner = CliRunner()
OPTIONS = ReportOptions(n_boot=200, seed=3)
TAG = "a_b&c|d"


@pytest.fixture(scope="module")
def feedback_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("fb")
    return write_feedback_result(d / "results", tag=TAG, n_scenes=30)


def test_bri_and_hits_by_query_match_the_run_metrics_and_a_hand_computation():
    ranks = np.array([[8, 3, 0], [2, 6, 0], [4, 1, 0]])  # rounds 0..2, query 2 has no relevant item
    bri = metrics.bri_by_query(ranks)
    # query 0: p = 8, 2, 2 -> T=1: (ln 8 + ln 2)/2; T=2: (ln 8 + ln 2)/4 + ln 2 / 2
    assert bri[1, 0] == pytest.approx((np.log(8) + np.log(2)) / 2)
    assert bri[2, 0] == pytest.approx((np.log(8) + np.log(2)) / 4 + np.log(2) / 2)
    assert bri[0, 1] == pytest.approx(np.log(3)) and np.isnan(bri[:, 2]).all()
    assert metrics.bri_series(ranks) == pytest.approx(np.nanmean(bri, axis=1).tolist())
    hits = metrics.hits_by_query(ranks, 5)
    assert hits[:, :2].tolist() == [[0, 1], [1, 1], [1, 1]] and np.isnan(hits[:, 2]).all()


def test_stats_reuse_the_suite_bootstrap_and_pair_the_same_queries():
    rng = np.random.default_rng(0)
    base = np.stack([ranks_with_hit_rate(rng, 300, h) for h in (0.3, 0.5, 0.6)])
    better = np.minimum(base, np.where(rng.random(base.shape) < 0.3, 1, base))
    ranks = {"none": base[[0, 0, 0]], "exclude": base, "refresh": better, "llm": base}
    stats = feedback_stats(ranks, 5, OPTIONS)
    hits_ex = metrics.hits_by_query(base, 5)
    expected = mean_interval(hits_ex[2], OPTIONS.n_boot, OPTIONS.seed, OPTIONS.level)
    got = stats.series["exclude"].hits[2]
    assert (got.value, got.lo, got.hi) == pytest.approx((expected.value, expected.lo, expected.hi))
    assert [d.arm for d in stats.differences] == ["refresh", "llm"]  # controls are not compared
    refresh, llm = stats.differences
    direct = paired_difference(
        metrics.bri_by_query(better)[2], metrics.bri_by_query(base)[2], OPTIONS.n_boot, OPTIONS.seed, OPTIONS.level
    )
    assert refresh.bri[2].diff == pytest.approx(direct.diff) and refresh.bri[2].hi == pytest.approx(direct.hi)
    assert refresh.hits[2].diff > 0 and refresh.hits[2].lo > 0 and refresh.bri[2].hi < 0
    assert llm.hits[2].diff == 0 and (llm.hits[2].lo, llm.hits[2].hi) == (0, 0)  # identical arms
    text = "\n".join(describe(stats, OPTIONS))
    assert "round 2 refresh - exclude: ΔHits@5 = +" in text and "B = 200, seed 3" in text


def test_bench_feedback_console_lines_carry_the_intervals(feedback_file):
    from benchmark.feedback.session import FeedbackOutcome

    r = load_result(feedback_file)
    lines = FeedbackOutcome(feedback_file, feedback_file.with_suffix(".jsonl"), r).lines()
    text = "\n".join(lines)
    assert "question writer: rules" in text and "B = 1000, seed 0" in text
    llm = next(line for line in lines if line.startswith("  round 3 llm "))
    assert (
        f"Hits@5 {r['per_round']['llm']['Hits@5'][3]:.3f} [" in llm
        and f"BRI {r['per_round']['llm']['BRI'][3]:.3f} [" in llm
    )
    assert any(line.startswith("  round 3 refresh - exclude: ΔHits@5 = ") for line in lines)


def test_report_writes_feedback_tables_and_convergence_plots(tmp_path, feedback_file):
    results = tmp_path / "results"
    shutil.copytree(feedback_file.parent, results)
    rng = np.random.default_rng(1)
    write_result(results, model="clip", ranks=ranks_with_hit_rate(rng, 50, 0.5), sims=rng.random(50))
    out = tmp_path / "reports"
    outcome = write_reports(results, out, OPTIONS)
    r = load_result(feedback_file)
    md = (out / "feedback.md").read_text()
    assert "K = 5" in md and "T = 3 feedback rounds" in md and "display 3 items" in md and "ranks 1-based" in md
    assert "not an LLM" in md and "B = 200" in md
    refresh = r["protocol"]["feedback_config"]["refresh"]
    assert f"score refreshing: kernel = {refresh['kernel']}, neighbours = {refresh['neighbours']}" in md  # as recorded
    # the tag is escaped in prose and tables, and shown as typed only inside a code span (the file name)
    assert "a\\_b&amp;c\\|d" in md
    assert md.replace(f"File: `feedback__clip__synthetic__{TAG}.json`.", "").count(TAG) == 0
    assert f"{results}/feedback__" not in md  # the file's name, not its machine path
    # point estimates are the file's own per-round numbers; each lies in its interval
    hits = r["per_round"]["llm"]["Hits@5"]
    row = next(line for line in md.splitlines() if line.startswith("| llm |"))
    assert f"{hits[3]:.3f}" in row.split("|")[-2]
    for arm in ("refresh - exclude", "llm - exclude"):
        assert f"| {arm} |" in md
    tex = (out / "feedback.tex").read_text()
    assert r"a\_b\&c\textbar{}d" in tex and r"\begin{tabular}" in tex and "not an LLM" in tex
    stem = "feedback__clip__synthetic__tiny__a_b_c_d"
    for fmt in ("png", "pdf"):
        assert (out / "figures" / f"{stem}.{fmt}").stat().st_size > 1000
    assert f"figures/{stem}.png" in md
    assert out / "figures" / f"{stem}.png" in outcome.files
    # the retrieval tables hold only the retrieval run
    assert "feedback" not in (out / "results.md").read_text()


def test_report_shows_both_user_models(tmp_path):
    """A graded and a binary run side by side: each section's protocol notes and each figure
    title name the run's user; a file from before the user models reads as binary."""
    results = tmp_path / "results"
    graded = write_feedback_result(results, tag="graded", n_scenes=20, arms=("none", "exclude", "refresh"))
    binary = write_feedback_result(
        results, tag="binary", n_scenes=20, arms=("none", "exclude", "refresh"), user="binary"
    )
    runs = {p.stem: feedback_run(load_result(p)) for p in (graded, binary)}
    assert runs[graded.stem].user_model == "graded" and runs[binary.stem].user_model == "binary"
    old = json.loads(binary.read_text())
    old["protocol"]["user"] = {"ground_truth": "scene_graph", "seed": 0, "unsure_rate": 0.0}
    assert feedback_run(old).user_model == "binary"
    out = tmp_path / "reports"
    write_reports(results, out, OPTIONS)
    md = (out / "feedback.md").read_text()
    assert (
        "simulated user: graded (constraint\\_share: PS if closeness &gt;= 0.6, NS if &lt; 0.4, unsure between; "
        "noise 0.1, seed 0)"
    ) in md  # Markdown-escaped
    assert "simulated user: binary (PS = relevant, NS = the others)" in md
    from benchmark.reporting.feedback_figures import convergence

    fig = convergence(runs[graded.stem], feedback_stats(runs[graded.stem].ranks, 5, OPTIONS), OPTIONS)
    assert "graded user" in fig._suptitle.get_text()


def test_report_without_feedback_files_still_builds(tmp_path):
    rng = np.random.default_rng(2)
    write_result(tmp_path / "results", model="clip", ranks=ranks_with_hit_rate(rng, 50, 0.5), sims=rng.random(50))
    write_reports(tmp_path / "results", tmp_path / "reports", OPTIONS)
    assert "No feedback result files" in (tmp_path / "reports" / "feedback.md").read_text()
    assert (tmp_path / "reports" / "feedback.tex").exists()


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["per_query"]["refresh"].pop(), "per_query.refresh"),
        (lambda r: r["per_query"]["exclude"][1].__setitem__(0, -2), "per_query.exclude"),
        (lambda r: r["per_query"].pop("llm"), "per_query.llm"),
        (lambda r: r["protocol"].__setitem__("rounds", "3"), "protocol.rounds"),
        (lambda r: r["protocol"].__setitem__("rank_base", 0), "protocol.rank_base"),
        (lambda r: r["protocol"].pop("display"), "protocol.display"),
        (lambda r: r["protocol"].__setitem__("llm", {"label": 3}), "protocol.llm"),
    ],
)
def test_a_malformed_feedback_file_is_refused_naming_file_and_field(feedback_file, mutate, field):
    data = json.loads(feedback_file.read_text()) | {"_path": "dir/x.json"}
    feedback_run(data)  # the file as written is valid
    mutate(data)
    with pytest.raises(ResultFileError, match=r"dir/x\.json: .*" + field.replace(".", r"\.")):
        feedback_run(data)


def test_bench_report_exits_2_on_a_malformed_feedback_file_and_keeps_the_old_report(tmp_path, feedback_file):
    results = tmp_path / "results"
    shutil.copytree(feedback_file.parent, results)
    out = tmp_path / "reports"
    args = ["report", "--results-dir", str(results), "--out-dir", str(out), "--bootstrap", "200"]
    assert runner.invoke(app, args).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    path = results / feedback_file.name
    data = json.loads(path.read_text())
    data["per_query"]["refresh"][2] = data["per_query"]["refresh"][2][:-1]
    path.write_text(json.dumps(data))
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert feedback_file.name in res.output and "per_query.refresh" in res.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost or half-written


# -- LLM fallbacks per arm ------------------------------------------------------------------------


def test_the_report_states_the_llm_arms_fallbacks(tmp_path, feedback_file):
    r = load_result(feedback_file)
    run = feedback_run(r | {"_path": str(feedback_file)})
    rounds, by_reason = r["fallbacks"]["llm_rounds"], r["fallbacks"]["by_reason"]
    assert rounds == run.n_queries * run.rounds  # every query asks the writer after each ranking 0..T-1
    assert run.fallbacks["llm"].rounds == rounds and run.fallbacks["llm"].by_reason == by_reason
    out = tmp_path / "reports"
    write_reports(feedback_file.parent, out, OPTIONS)
    md = (out / "feedback.md").read_text()
    fell = sum(by_reason.values())
    assert f"arm llm: {fell:,} of {rounds:,} query-rounds" in md
    assert "arms none, exclude, refresh ask no question writer" in md
    assert ("all rounds fell back" in md) == (fell == rounds)


def test_an_llm_arm_whose_rounds_all_fell_back_is_labelled_so(tmp_path):
    from tests.reporting_fixtures import DownBackend

    path = write_feedback_result(tmp_path / "results", n_scenes=30, backend=DownBackend())
    r = load_result(path)
    assert r["fallbacks"]["by_reason"] == {"unreachable": r["fallbacks"]["llm_rounds"]} and r["fallbacks"]["llm_rounds"]
    # what the label claims: the arm ranked exactly as score refreshing did
    assert r["per_query"]["llm"] == r["per_query"]["refresh"]
    write_reports(tmp_path / "results", tmp_path / "reports", OPTIONS)
    md = (tmp_path / "reports" / "feedback.md").read_text()
    label = "llm (all rounds fell back to refresh)"
    assert f"| {label} |" in md and f"| {label} - exclude |" in md
    assert not re.search(r"^\| llm \|", md, re.M)  # never shown as a plain llm arm
    n = r["fallbacks"]["llm_rounds"]
    assert f"arm llm: {n:,} of {n:,} query-rounds (100.0%) fell back to refresh (unreachable: {n:,})" in md
    assert "all rounds fell back to refresh" in (tmp_path / "reports" / "feedback.tex").read_text()


@pytest.mark.parametrize(
    "bad",
    [
        {"llm_rounds": -1, "by_reason": {}},
        {"llm_rounds": 3, "by_reason": {"x": 4}},
        {"llm_rounds": 3, "by_reason": []},
        "many",
    ],
)
def test_a_malformed_fallbacks_record_is_refused(feedback_file, bad):
    data = json.loads(feedback_file.read_text()) | {"_path": "dir/x.json", "fallbacks": bad}
    with pytest.raises(ResultFileError, match=r"dir/x\.json: field fallbacks"):
        feedback_run(data)
