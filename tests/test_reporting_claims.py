"""Claim verdicts follow the data: each claim flips when its data flip, and is "not tested"
when its runs are absent or do not share their queries. Each claim says whose it is: the
paper's, quoted verbatim, or the suite's own."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from benchmark.reporting.claims import (
    CLAIMS,
    CONTRADICTED,
    NOT_TESTED,
    PAPER,
    SUITE,
    SUPPORTED,
    Origin,
    evaluate_claims,
)
from benchmark.reporting.claims_markdown import render_claims
from benchmark.reporting.estimates import Estimator
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paper import load_paper_tables
from benchmark.results import load_result_files
from tests.reporting_fixtures import ENV, ranks_with_hit_rate, write_result, write_speed_result

N = 500
OPTIONS = ReportOptions(n_boot=300, seed=0)


def _verdicts(tmp_path, claim: str) -> list:
    return CLAIMS[claim].evaluate(load_result_files(tmp_path), Estimator(OPTIONS), load_paper_tables())


def _shifted(rng, base: np.ndarray, hit_base: float, hit: float) -> np.ndarray:
    """``base``'s ranks with a share of its queries improved into, or pushed out of, the top 5."""
    out = base.copy()
    flip = rng.random(len(base)) < abs(hit - hit_base) / max(hit_base, 1 - hit_base)
    if hit > hit_base:
        out[flip & (base > 5)] = 1
    else:
        out[flip & (base <= 5)] = 50
    return out


def _pair(tmp_path, hit_ours: float, hit_blip2: float, **ours_kw):
    """ours and blip2 on the same queries; ours improves or degrades a share of blip2's queries."""
    rng = np.random.default_rng(0)
    base = ranks_with_hit_rate(rng, N, hit_blip2)
    ours = _shifted(rng, base, hit_blip2, hit_ours)
    write_result(tmp_path, model="blip2", ranks=base, sims=rng.random(N))
    write_result(tmp_path, model="ours", ranks=ours, sims=rng.random(N), lengths=rng.integers(8, 40, N), **ours_kw)


def _better_and_worse(tmp_path, build, claim: str, worse: tuple[float, float]):
    """The claim's verdicts on data where ours gains 0.3 R@5 and where it loses ``worse``."""
    build(tmp_path / "better", 0.6, 0.3)
    build(tmp_path / "worse", *worse)
    (b,) = _verdicts(tmp_path / "better", claim)
    (w,) = _verdicts(tmp_path / "worse", claim)
    assert b.verdict == SUPPORTED and w.verdict == CONTRADICTED
    return b, w


def test_r5_claim_flips_with_the_data(tmp_path):
    better, worse = _better_and_worse(tmp_path, _pair, "r5_vs_blip2", (0.1, 0.5))
    assert "ΔR@5 = +" in better.evidence and "ΔR@5 = -" in worse.evidence


def _matched(tmp_path, hit_ours: float, hit_long: float, *, long_epochs: int = 8, start: dict | None = None):
    """ours (4 epochs from a 4-epoch BLIP2 start) beside BLIP2 at 4 epochs (hit rate 0.1) and
    at ``long_epochs`` (``hit_long``), all on the same queries."""
    rng = np.random.default_rng(3)
    long = ranks_with_hit_rate(rng, N, hit_long)
    ours = _shifted(rng, long, hit_long, hit_ours)
    deps = {"blip2_checkpoint": {"model": "blip2", "config": {"train": {"max_epochs": 4}}}} if start is None else start
    write_result(tmp_path, model="blip2", ranks=ranks_with_hit_rate(rng, N, 0.1), sims=rng.random(N), epochs=4)
    write_result(tmp_path, model="blip2", ranks=long, sims=rng.random(N), epochs=long_epochs, tag="matched-ours")
    write_result(tmp_path, model="ours", ranks=ours, sims=rng.random(N), epochs=4, dependencies=deps)


def test_matched_training_claim_compares_ours_with_blip2_trained_as_long(tmp_path):
    _, worse = _better_and_worse(tmp_path, _matched, "r5_vs_blip2_matched", (0.2, 0.5))
    assert "BLIP2 trained 8 epochs" in worse.evidence and "blip2__synthetic__matched-ours.json" in worse.evidence
    assert "4 epochs of its BLIP2 start + 4 of its own" in worse.evidence
    # the plain claim still reads the 4-epoch BLIP2 (hit rate 0.1), which ours beats in both folders
    assert {v.verdict for p in ("better", "worse") for v in _verdicts(tmp_path / p, "r5_vs_blip2")} == {SUPPORTED}


@pytest.mark.parametrize(
    "long_epochs, start, evidence",
    [
        (12, None, "No blip2 run trained 8 epochs (ours: 4 of its BLIP2 start + 4 of its own)"),
        (8, {}, "records no trained BLIP2 start"),
        (8, {"blip2_checkpoint": {"model": "blip2", "given": True}}, "records no trained BLIP2 start"),
    ],
)
def test_matched_training_claim_needs_a_blip2_of_the_same_total_training(tmp_path, long_epochs, start, evidence):
    _matched(tmp_path, 0.6, 0.3, long_epochs=long_epochs, start=start)
    (verdict,) = _verdicts(tmp_path, "r5_vs_blip2_matched")
    assert verdict.verdict == NOT_TESTED and evidence in verdict.evidence


def test_claims_without_their_runs_are_not_tested(tmp_path):
    rng = np.random.default_rng(1)
    write_result(
        tmp_path,
        model="ours",
        ranks=ranks_with_hit_rate(rng, N, 0.3),
        sims=rng.random(N),
        lengths=rng.integers(8, 40, N),
    )
    for name in ("r5_vs_blip2", "r5_vs_blip2_matched", "qscaler_shortens", "qformer_training", "faster_than_blip2"):
        verdicts = _verdicts(tmp_path, name)
        assert {v.verdict for v in verdicts} == {NOT_TESTED}, name
    (r5,) = _verdicts(tmp_path, "r5_vs_blip2")
    assert "No blip2 run" in r5.evidence


def test_runs_on_different_queries_are_not_paired(tmp_path):
    rng = np.random.default_rng(2)
    write_result(tmp_path, model="blip2", ranks=ranks_with_hit_rate(rng, N, 0.3), sims=rng.random(N))
    write_result(tmp_path, model="ours", ranks=ranks_with_hit_rate(rng, N, 0.6), sims=rng.random(N), seed=1)
    (v,) = _verdicts(tmp_path, "r5_vs_blip2")
    assert v.verdict == NOT_TESTED and "did not score the same queries" in v.evidence


def _qscaler(tmp_path, with_lengths: np.ndarray, with_hit_drop: float):
    rng = np.random.default_rng(3)
    ranks = ranks_with_hit_rate(rng, N, 0.4)
    worse = ranks.copy()
    worse[(rng.random(N) < with_hit_drop) & (ranks <= 5)] = 60
    sims = rng.random(N)
    write_result(tmp_path, model="ours", ranks=worse, sims=sims, lengths=with_lengths)
    write_result(
        tmp_path,
        model="ours",
        tag="fixed",
        ranks=ranks,
        sims=sims,
        lengths=np.full(N, 32),
        model_args={"qscaler": False},
    )


def test_qscaler_claim_flips_with_the_data(tmp_path):
    short = np.random.default_rng(4).integers(10, 24, N)
    _qscaler(tmp_path / "good", short, 0.0)
    _qscaler(tmp_path / "long", np.full(N, 32), 0.0)
    _qscaler(tmp_path / "lossy", short, 0.6)
    (good,) = _verdicts(tmp_path / "good", "qscaler_shortens")
    (long,) = _verdicts(tmp_path / "long", "qscaler_shortens")
    (lossy,) = _verdicts(tmp_path / "lossy", "qscaler_shortens")
    assert good.verdict == SUPPORTED and "from 32.00" in good.evidence
    assert long.verdict == CONTRADICTED and lossy.verdict == CONTRADICTED


def test_complexity_claim_flips_with_the_data(tmp_path):
    rng = np.random.default_rng(5)
    complexity = np.arange(N) % 5 + 1
    for name, lengths in (
        ("grows", 8 + 6 * complexity),
        ("shrinks", 48 - 6 * complexity),
        ("constant", np.full(N, 32)),
    ):
        write_result(
            tmp_path / name,
            model="ours",
            ranks=ranks_with_hit_rate(rng, N, 0.3),
            sims=rng.random(N),
            lengths=lengths + rng.integers(0, 3, N) * (name != "constant"),
            complexity=complexity,
        )
    write_result(
        tmp_path / "flat",
        model="ours",
        ranks=ranks_with_hit_rate(rng, N, 0.3),
        sims=rng.random(N),
        lengths=rng.integers(8, 40, N),
        complexity=np.zeros(N, dtype=int),
        dataset="coco",
    )
    assert _verdicts(tmp_path / "grows", "qlen_complexity")[0].verdict == SUPPORTED
    assert _verdicts(tmp_path / "shrinks", "qlen_complexity")[0].verdict == CONTRADICTED
    constant = _verdicts(tmp_path / "constant", "qlen_complexity")[0]
    assert constant.verdict == CONTRADICTED and "L = 32" in constant.evidence
    flat = _verdicts(tmp_path / "flat", "qlen_complexity")[0]
    assert flat.verdict == NOT_TESTED and "no complexity levels" in flat.evidence


def test_throughput_claim_needs_both_measurements_on_one_machine(tmp_path):
    for name, (t_ours, t_blip2), env in (
        ("fast", (60.0, 40.0), None),
        ("slow", (30.0, 50.0), None),
        ("elsewhere", (60.0, 40.0), ENV | {"cpu_count": 64}),
    ):
        rng = np.random.default_rng(6)
        ranks = ranks_with_hit_rate(rng, N, 0.3)
        write_result(
            tmp_path / name, model="blip2", ranks=ranks, sims=rng.random(N), extra_metrics={"throughput_img_s": t_blip2}
        )
        write_result(
            tmp_path / name,
            model="ours",
            ranks=ranks,
            sims=rng.random(N),
            environment=env,
            extra_metrics={"throughput_img_s": t_ours},
        )
    fast = _verdicts(tmp_path / "fast", "faster_than_blip2")[0]
    paper = load_paper_tables().comparison.rows
    assert fast.verdict == SUPPORTED and f"Paper: ours {paper['ours'].values['thr']:g} vs BLIP2" in fast.evidence
    assert _verdicts(tmp_path / "slow", "faster_than_blip2")[0].verdict == CONTRADICTED
    elsewhere = _verdicts(tmp_path / "elsewhere", "faster_than_blip2")[0]
    assert elsewhere.verdict == NOT_TESTED and "cpu_count" in elsewhere.evidence


def test_throughput_claim_reads_a_side_by_side_speed_run_first(tmp_path):
    from benchmark.reporting.claims import evaluate_claims

    rng = np.random.default_rng(6)
    ranks = ranks_with_hit_rate(rng, N, 0.3)
    write_result(tmp_path, model="blip2", ranks=ranks, sims=rng.random(N), extra_metrics={"throughput_img_s": 40.0})
    write_result(tmp_path, model="ours", ranks=ranks, sims=rng.random(N), extra_metrics={"throughput_img_s": 60.0})
    assert _verdicts(tmp_path, "faster_than_blip2")[0].verdict == SUPPORTED  # the two runs' own figures
    write_speed_result(tmp_path, rounds=[(30.0, 40.0), (36.0, 40.0), (32.0, 40.0)])  # side by side: 0.8 / 0.9 / 0.75
    (v,) = _verdicts(tmp_path, "faster_than_blip2")
    assert v.verdict == CONTRADICTED and "ours / BLIP2 = 0.80, the median of 3 alternating rounds" in v.evidence
    assert "range 0.75-0.90" in v.evidence and "ours__synthetic__speed__default.json" in v.evidence
    write_speed_result(tmp_path, rounds=[(41.0, 40.0), (39.0, 40.0)], tag="close")  # a default-tag run wins
    assert _verdicts(tmp_path, "faster_than_blip2")[0].evidence == v.evidence
    # the other claims never read the speed file: the report passes every result file to all claims
    claims = dict(
        (c.name, vs) for c, vs in evaluate_claims(load_result_files(tmp_path), Estimator(OPTIONS), load_paper_tables())
    )
    assert claims["faster_than_blip2"][0].evidence == v.evidence
    assert claims["r5_vs_blip2"][0].verdict != NOT_TESTED and "speed" not in claims["r5_vs_blip2"][0].evidence


def test_qformer_claim_flips_with_the_data(tmp_path):
    for name, frozen_drop in (("helps", 0.7), ("same", 0.0)):
        rng = np.random.default_rng(7)
        ranks = ranks_with_hit_rate(rng, N, 0.4)
        frozen = ranks.copy()
        frozen[(rng.random(N) < frozen_drop) & (ranks <= 5)] = 70
        sims = rng.random(N)
        write_result(tmp_path / name, model="ours", ranks=ranks, sims=sims)
        write_result(
            tmp_path / name, model="ours", tag="frozen", ranks=frozen, sims=sims, model_args={"freeze_qformer": True}
        )
    assert _verdicts(tmp_path / "helps", "qformer_training")[0].verdict == SUPPORTED
    assert _verdicts(tmp_path / "same", "qformer_training")[0].verdict == CONTRADICTED


# -- whose claim: the paper's, quoted, or the suite's own ----------------------------------------

PAPER_TEXT = Path("/work/shared/reference/seed-instructsee-paper.txt")  # the stored paper text, where present
ROW_MEASURES = ("sim", "r5", "mrr", "qlen", "gflops", "thr")  # the paper's ablation columns, in order


def test_each_claim_says_whose_it_is():
    assert {n for n, c in CLAIMS.items() if c.origin.kind == PAPER} == {
        "qscaler_shortens",
        "qlen_complexity",
        "qformer_training",
    }
    # the paper reports ours slower than BLIP2 and gives no R@5 for BLIP2: those two are the suite's
    assert CLAIMS["faster_than_blip2"].origin.kind == SUITE and CLAIMS["r5_vs_blip2"].origin.kind == SUITE
    with pytest.raises(ValueError, match="needs its quote"):
        Origin(PAPER, "Section 1")
    with pytest.raises(ValueError, match="needs a note"):
        Origin(SUITE)


def test_quoted_table_rows_are_the_paper_tables_figures():
    """The quotes of the ablation rows carry the same figures as benchmark/reference/paper_tables.json."""
    paper = load_paper_tables()
    arms = {
        "With QScaler": ("qscaler", "true"),
        "Without QScaler": ("qscaler", "false"),
        "Trainable Q-Former": ("qformer", "false"),
        "Frozen Q-Former": ("qformer", "true"),
    }
    seen = set()
    for claim in CLAIMS.values():
        for quote in claim.origin.quotes:
            name, *cells = [c.strip() for c in quote.split("|")]
            if name in arms:
                table, arm = arms[name]
                assert [float(c) for c in cells] == [paper.ablations[table].rows[arm].values[m] for m in ROW_MEASURES]
                seen.add(name)
    assert seen == set(arms)


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason="the stored paper text is not on this machine")
def test_every_quote_is_verbatim_from_the_paper():
    text = PAPER_TEXT.read_text(encoding="utf-8")
    quotes = [q for c in CLAIMS.values() for q in c.origin.quotes]
    assert quotes and all(q in text for q in quotes)
    citation = load_paper_tables().paper
    assert "Gu, G.; Xue, Y.; Wu, Z.; Song, L.; Liang, C. InstructSee" in text and citation.startswith(
        "Gu, G.; Xue, Y.; Wu, Z.; Song, L.; Liang, C. InstructSee"
    )


def test_claims_report_labels_the_suites_claims_and_cites_the_paper(tmp_path):
    write_speed_result(tmp_path, rounds=[(80.0, 100.0), (82.0, 100.0), (79.0, 100.0)])
    paper = load_paper_tables()
    text = render_claims(evaluate_claims(load_result_files(tmp_path), Estimator(OPTIONS), paper), OPTIONS, paper.paper)
    assert (
        "| Ours encodes more images per second than BLIP2 (fewer queries should cost less). | the suite's own |" in text
    )
    section = text[text.index("## Ours encodes more images") :]
    assert section.split("\n\n")[1].startswith("The suite's own claim, not the paper's.")
    assert "reports ours slower than BLIP2" in section and "Paper: ours 29.41 vs BLIP2 52.63 img/s" in section
    assert "The paper's claim (Section 5.3.1" in text and "“Instruction-aware dynamic query generation" in text
    assert "Sensors 2025" in text and "/work/" not in text


def test_the_paper_is_named_by_citation_never_by_a_file_path():
    paper = load_paper_tables()
    texts = [paper.paper, paper.comparison.source, *paper.caveats, *(t.source for t in paper.ablations.values())]
    for t in texts:
        assert not re.search(r"(^|[\s(])(/|~/|[A-Za-z]:\\)\w", t), t  # no absolute path of any machine
        assert ".txt" not in t and ".md" not in t, t
    assert re.fullmatch(r"Gu, G\.; .*InstructSee: .* Sensors 2025, 25\(16\), 5195\. https://doi\.org/\S+", paper.paper)
