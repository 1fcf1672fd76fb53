"""The conditioning claim, and the claims across seeds: a verdict per seed, the t-interval of the
per-seed effect and the claim's rule on it, the base seed of the main verdicts, the report text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.reporting.claims import (
    CLAIMS,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_TESTED,
    SUPPORTED,
    base_seed,
    evaluate_claims,
)
from benchmark.reporting.claims_markdown import render_claims
from benchmark.reporting.claims_seeds import across_seeds, t_interval, t_quantile
from benchmark.reporting.estimates import Estimator
from benchmark.reporting.options import ReportOptions
from benchmark.reporting.paper import load_paper_tables
from benchmark.results import load_result_files
from tests.reporting_fixtures import ranks_with_hit_rate, write_result

N = 500
OPTIONS = ReportOptions(n_boot=300, seed=0)


def _conditioning(tmp_path, *, seed: int = 0, promote: float = 0.0, demote: float = 0.0, suffix: str = ""):
    """Ours with and without the conditioned ITM on the same queries: the conditioned pass moves a
    share of the plain pass's rank-2..5 queries to rank 1 (``promote``) or its rank-1 queries to
    rank 3 (``demote``)."""
    rng = np.random.default_rng(10 + seed)
    plain = ranks_with_hit_rate(rng, N, 0.4)
    cond = plain.copy()
    cond[(rng.random(N) < promote) & (plain > 1) & (plain <= 5)] = 1
    cond[(rng.random(N) < demote) & (plain == 1)] = 3
    sims = rng.random(N)
    lengths = rng.integers(8, 40, N)
    write_result(tmp_path, model="ours", tag="default" + suffix, ranks=cond, sims=sims, lengths=lengths, seed=seed)
    write_result(
        tmp_path,
        model="ours",
        tag="ablate-conditioning-without" + suffix,
        ranks=plain,
        sims=sims,
        lengths=lengths,
        seed=seed,
        model_args={"itm_conditioning": False},
    )
    return cond, plain


def _claim(tmp_path, name: str):
    return CLAIMS[name].evaluate(load_result_files(tmp_path), Estimator(OPTIONS), load_paper_tables())


def test_conditioning_claim_flips_with_the_data(tmp_path):
    _conditioning(tmp_path / "helps", promote=0.6)
    _conditioning(tmp_path / "hurts", demote=0.8)
    _conditioning(tmp_path / "same")
    (helps,) = _claim(tmp_path / "helps", "itm_conditioning")
    (hurts,) = _claim(tmp_path / "hurts", "itm_conditioning")
    (same,) = _claim(tmp_path / "same", "itm_conditioning")
    assert helps.verdict == SUPPORTED and "ΔR@1 = +" in helps.evidence and "ΔR@5 = +0.0000" in helps.evidence
    assert hurts.verdict == CONTRADICTED and "ΔR@1 = -" in hurts.evidence
    assert same.verdict == CONTRADICTED  # not better by more than m: the rule of "better"
    assert "ablate-conditioning-without" in helps.evidence and [e.label for e in helps.effects] == ["ΔR@1", "ΔR@5"]
    write_result(tmp_path / "none", model="ours", ranks=np.ones(N, dtype=int), sims=np.zeros(N))
    (absent,) = _claim(tmp_path / "none", "itm_conditioning")
    assert absent.verdict == NOT_TESTED and "itm_conditioning = true and false" in absent.evidence


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 30])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, p):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_quantile(p, df) == pytest.approx(float(scipy_stats.t.ppf(p, df)), rel=1e-5, abs=1e-6)


def test_t_quantile_refuses_bad_arguments():
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError, match="p must"):
        t_quantile(1.0, 3)


def test_each_seed_is_judged_alone_and_the_interval_is_across_seeds(tmp_path):
    promote = {0: 0.5, 1: 0.3, 2: 0.45}
    diffs = []
    for seed, share in promote.items():
        cond, plain = _conditioning(tmp_path, seed=seed, promote=share, suffix="" if seed == 0 else f"-seed{seed}")
        diffs.append((cond <= 1).mean() - (plain <= 1).mean())
    results = load_result_files(tmp_path)
    report = across_seeds(results, Estimator(OPTIONS), load_paper_tables())
    assert report.seeds == (0, 1, 2)
    rows = dict((c.name, r) for c, r in report.claims)["itm_conditioning"]
    (row,) = rows
    assert [s for s, _ in row.per_seed] == [0, 1, 2] and all(v.verdict == SUPPORTED for _, v in row.per_seed)
    r1 = next(e for e in row.effects if e.label == "ΔR@1")
    values = np.array(diffs)
    assert [v for _, v in r1.values] == pytest.approx(values.tolist())
    half = t_quantile(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert (r1.mean, r1.lo, r1.hi) == pytest.approx((values.mean(), values.mean() - half, values.mean() + half))
    assert r1.verdict == (SUPPORTED if r1.lo > 0 else INCONCLUSIVE)
    # the main verdicts read the base seed only (one verdict, not one per seed)
    main = dict((c.name, vs) for c, vs in evaluate_claims(results, Estimator(OPTIONS), load_paper_tables()))
    (v,) = main["itm_conditioning"]
    assert v.evidence == row.per_seed[0][1].evidence
    text = render_claims(
        evaluate_claims(results, Estimator(OPTIONS), load_paper_tables()),
        OPTIONS,
        "citation",
        report,
        base_seed(results),
    )
    assert "Verdicts at the base seed 0" in text and "| seed 0 | seed 1 | seed 2 | Across seeds |" in text
    assert f"ΔR@1 {r1.mean:+.4f} [{r1.lo:+.4f}, {r1.hi:+.4f}] over 3 seed(s)" in text


def test_seeds_that_disagree_give_an_inconclusive_interval(tmp_path):
    for seed, (promote, demote) in {0: (0.6, 0.0), 1: (0.0, 0.8), 2: (0.3, 0.0)}.items():
        _conditioning(tmp_path, seed=seed, promote=promote, demote=demote, suffix=f"-seed{seed}")
    report = across_seeds(load_result_files(tmp_path), Estimator(OPTIONS), load_paper_tables())
    (row,) = dict((c.name, r) for c, r in report.claims)["itm_conditioning"]
    assert [v.verdict for _, v in row.per_seed] == [SUPPORTED, CONTRADICTED, SUPPORTED]
    r1, r5 = row.effects
    assert r1.lo < 0 and r1.hi > OPTIONS.equal_margin  # the seeds do not agree on the sign
    assert r5.values and all(v == 0 for _, v in r5.values) and r5.verdict == SUPPORTED  # moves within the top 5
    assert r1.verdict == INCONCLUSIVE and row.verdict == INCONCLUSIVE


def test_one_seed_says_there_is_no_interval(tmp_path):
    _conditioning(tmp_path, promote=0.5)
    results = load_result_files(tmp_path)
    report = across_seeds(results, Estimator(OPTIONS), load_paper_tables())
    assert report.seeds == (0,) and report.claims == ()
    text = render_claims(evaluate_claims(results, Estimator(OPTIONS), load_paper_tables()), OPTIONS, "c", report)
    assert "1 seed (0): no across-seed interval" in text and "base seed" not in text


def test_a_claim_missing_at_a_seed_and_the_interval_of_one_value():
    assert t_interval(np.array([0.3]), 0.95) == (0.3, None, None)
    mean, lo, hi = t_interval(np.array([0.1, 0.3]), 0.95)
    assert mean == pytest.approx(0.2) and lo < 0 < hi  # t(1) is wide: 12.7 standard errors


def test_base_seed_is_the_seed_of_most_files():
    assert base_seed([{"seed": 3}, {"seed": 1}, {"seed": 3}]) == 3
    assert base_seed([{"seed": 3}, {"seed": 1}]) == 1
    assert base_seed([{}]) is None
