"""Peak memory of the image-image path (fresh processes, VmHWM; not timed): far below the
dense ``G x G`` float32 matrix the feedback loop used to allocate.

Bounds (:func:`benchmark.feedback.memcheck.bound_mb`), 64-d random vectors, top_k 16,
row_chunk 256: the whole top-k table of G = 20,000 may add at most 3 x 256 x G x 4 B +
G x 16 x 12 B + 64 MiB = 126.3 MiB over the baseline (dense: 1,526 MiB); one mean-kernel
round of 64 queries x 5 shown at G = 50,000 at most 4 x 64 x 5 x G x 4 B + 256 x G x 4 B
+ 64 MiB = 357.0 MiB (dense: 9,537 MiB). The slow test builds the whole table at
G = 50,000: at most 219.6 MiB.
"""

from __future__ import annotations

import json

import pytest

from benchmark.feedback.memcheck import bound_mb, dense_mb
from benchmark.measure.memory import peak_rss_mb_in_fresh_process

TARGET = "benchmark.feedback.memcheck:probe"


def _extra_mb(tmp_path, step: str, **kw) -> float:
    """Peak RSS of a fresh process running ``step`` minus its own peak just before the step."""
    out = tmp_path / f"{step}.json"
    peak = peak_rss_mb_in_fresh_process(TARGET, step=step, out=str(out), **kw)
    return peak - json.loads(out.read_text())["baseline_mb"]


def test_bounds_are_far_below_the_dense_matrix():
    assert bound_mb("table", 20_000, 16, 256) == pytest.approx(126.3, abs=0.1)
    assert bound_mb("rows", 50_000, 16, 256, 64, 5) == pytest.approx(357.0, abs=0.1)
    assert bound_mb("table", 50_000, 16, 256) == pytest.approx(219.6, abs=0.1)
    assert dense_mb(20_000) > 12 * bound_mb("table", 20_000, 16, 256)
    assert dense_mb(50_000) > 25 * bound_mb("rows", 50_000, 16, 256, 64, 5)
    with pytest.raises(ValueError, match="step must be one of"):
        bound_mb("all", 10, 1, 1)


def test_whole_top_k_table_stays_within_its_bound(tmp_path):
    kw = {"n_gallery": 20_000, "dim": 64, "top_k": 16, "row_chunk": 256}
    extra = _extra_mb(tmp_path, "table", **kw)
    assert 0 < extra <= bound_mb("table", 20_000, 16, 256)


def test_a_whole_row_round_at_50k_stays_within_its_bound(tmp_path):
    kw = {"n_gallery": 50_000, "dim": 64, "top_k": 16, "row_chunk": 256, "n_queries": 64, "display": 5}
    extra = _extra_mb(tmp_path, "rows", **kw)
    assert 0 < extra <= bound_mb("rows", 50_000, 16, 256, 64, 5)


@pytest.mark.slow
def test_whole_top_k_table_at_50k_stays_within_its_bound(tmp_path):
    kw = {"n_gallery": 50_000, "dim": 64, "top_k": 16, "row_chunk": 256}
    assert 0 < _extra_mb(tmp_path, "table", **kw) <= bound_mb("table", 50_000, 16, 256)
