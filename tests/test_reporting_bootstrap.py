"""Bootstrap intervals, the paired test and Spearman's rho against scipy and known truths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmark.reporting import bootstrap as bs
from benchmark.reporting.options import ReportOptions, ReportOptionsError
from benchmark.reporting.per_query import PairingError, check_same_queries, query_values
from benchmark.results import load_result
from tests.reporting_fixtures import ranks_with_hit_rate, write_result


@pytest.mark.parametrize("kind", ["normal", "binary"])
def test_percentile_interval_matches_scipy(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 1.0, 80) if kind == "normal" else (rng.random(80) < 0.3).astype(float)
    ours = bs.mean_interval(x, n_boot=4000, seed=0)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    tol = 0.2 * x.std() / np.sqrt(x.size) + 1 / x.size  # Monte Carlo error, plus one atom for 0/1 data
    assert ours.value == pytest.approx(x.mean())
    assert ours.lo == pytest.approx(ref.low, abs=tol) and ours.hi == pytest.approx(ref.high, abs=tol)
    assert ours.contains(ours.value) and ours.n == 80


def test_intervals_are_seeded_and_independent_of_chunking(monkeypatch):
    x = np.random.default_rng(0).random((300, 3))
    x[::7, 1] = np.nan  # a skipped query is left out of that column's mean
    first = bs.mean_intervals(x, n_boot=500, seed=5)
    assert first == bs.mean_intervals(x, n_boot=500, seed=5)
    assert first != bs.mean_intervals(x, n_boot=500, seed=6)
    assert first[1].value == pytest.approx(np.nanmean(x[:, 1])) and first[1].n == 300 - len(range(0, 300, 7))
    monkeypatch.setattr(bs, "_MAX_CELLS", 1000)  # many small chunks, same resamples
    chunked = bs.mean_intervals(x, n_boot=500, seed=5)
    assert [v for i in chunked for v in (i.lo, i.hi)] == pytest.approx(
        [v for i in first for v in (i.lo, i.hi)], abs=1e-12
    )


def test_paired_test_detects_a_real_difference():
    rng = np.random.default_rng(1)
    b = rng.normal(0.0, 1.0, 400)
    a = b + 0.15 + rng.normal(0.0, 0.5, 400)  # true mean difference 0.15
    d = bs.paired_difference(a, b, n_boot=2000, seed=0)
    assert d.p_value < 0.01 and d.lo > 0 and d.lo <= 0.15 <= d.hi
    assert d.diff == pytest.approx(np.mean(a - b))


def test_paired_test_does_not_flag_a_null_difference():
    rng = np.random.default_rng(2)
    b = rng.normal(0.0, 1.0, 400)
    a = b + rng.normal(0.0, 0.5, 400)  # no true difference
    d = bs.paired_difference(a, b, n_boot=2000, seed=0)
    assert d.p_value > 0.05 and d.lo < 0 < d.hi
    same = bs.paired_difference(b, b, n_boot=500, seed=0)
    assert (same.diff, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_pairing_beats_unpaired_resampling_on_correlated_runs():
    rng = np.random.default_rng(4)
    b = rng.normal(0.0, 1.0, 300)
    a = b + 0.05 + rng.normal(0.0, 0.05, 300)
    d = bs.paired_difference(a, b, n_boot=1000, seed=0)
    ia, ib = bs.mean_interval(a, 1000, 0), bs.mean_interval(b, 1000, 1)
    assert d.lo > 0 and ia.lo < ib.hi  # the separate intervals overlap, the paired one excludes 0


def test_spearman_matches_scipy_in_both_resampling_paths(monkeypatch):
    rng = np.random.default_rng(5)
    level = rng.integers(1, 6, 500)
    length = np.clip(8 + 4 * level + rng.integers(-6, 7, 500), 8, 48)
    cells = bs.spearman_interval(level, length, n_boot=1000, seed=0)
    assert cells.value == pytest.approx(stats.spearmanr(level, length).statistic)
    assert cells.lo < cells.value < cells.hi
    monkeypatch.setattr(bs, "_MAX_CELLS_SPEARMAN", 0)  # resample pairs and rank them instead
    rows = bs.spearman_interval(level, length, n_boot=1000, seed=0)
    assert rows.value == cells.value
    assert rows.lo == pytest.approx(cells.lo, abs=0.02) and rows.hi == pytest.approx(cells.hi, abs=0.02)
    idx = rng.integers(0, 500, 500)
    assert bs.spearman_rows(level[idx][None], length[idx][None])[0] == pytest.approx(
        stats.spearmanr(level[idx], length[idx]).statistic
    )


def test_report_options_are_validated():
    with pytest.raises(ReportOptionsError, match="--bootstrap"):
        ReportOptions(n_boot=10)
    with pytest.raises(ReportOptionsError, match="--seed"):
        ReportOptions(seed=-1)
    text = ReportOptions(n_boot=250, seed=9).describe()
    assert "B = 250" in text and "seed 9" in text


def test_per_query_values_reproduce_the_stored_metrics(tmp_path):
    rng = np.random.default_rng(6)
    ranks = ranks_with_hit_rate(rng, 200, 0.4)
    ranks[:10] = 0  # skipped queries
    r = load_result(
        write_result(tmp_path, model="ours", ranks=ranks, sims=rng.random(200), lengths=rng.integers(8, 48, 200))
    )
    q = query_values(r)
    m = r["metrics"]
    assert np.nanmean(q.columns["r5"]) == pytest.approx(m["t2i/R@5"])
    assert np.nanmean(q.columns["mrr"]) == pytest.approx(m["t2i/MRR"])
    assert np.nanmean(q.columns["sim"]) == pytest.approx(m["t2i/Sim"], abs=1e-6)
    assert q.columns["qlen"].mean() == pytest.approx(m["qlen/mean"])


def test_pairing_refuses_runs_on_different_queries(tmp_path):
    rng = np.random.default_rng(7)
    sims = rng.random(100)
    a = load_result(write_result(tmp_path / "a", model="ours", ranks=ranks_with_hit_rate(rng, 100, 0.3), sims=sims))
    other_data = load_result(
        write_result(
            tmp_path / "b", model="blip2", ranks=ranks_with_hit_rate(rng, 100, 0.3), sims=sims, annotations="b" * 64
        )
    )
    with pytest.raises(PairingError, match="annotations_sha256 differs"):
        check_same_queries(a, other_data)
    fewer = load_result(
        write_result(tmp_path / "c", model="blip2", ranks=ranks_with_hit_rate(rng, 95, 0.3), sims=sims[:95])
    )
    with pytest.raises(PairingError, match="n_queries differs"):
        check_same_queries(a, fewer)
    same = load_result(write_result(tmp_path / "d", model="blip2", ranks=ranks_with_hit_rate(rng, 100, 0.3), sims=sims))
    qa, qb = check_same_queries(a, same)
    assert qa.n == qb.n == 100
