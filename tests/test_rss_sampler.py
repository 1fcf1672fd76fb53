"""benchmark/rss_sampler.py: per-stage peak RSS from a sampling thread."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmark.rss_sampler import RssSampler, read_rss

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@linux
def test_read_rss_fields() -> None:
    values = read_rss()
    assert set(values) == {"rss_bytes", "anon_bytes", "file_bytes"}
    assert values["rss_bytes"] >= values["anon_bytes"] > 0


@linux
def test_peak_is_attributed_to_the_stage_that_held_the_memory() -> None:
    stage = ["small"]
    with RssSampler(lambda: stage[0], interval_s=0.01) as sampler:
        sampler.sample()
        stage[0] = "big"
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        sampler.sample()
        del block
        stage[0] = "after"
        sampler.sample()
    peaks = {row["stage"]: row["rss_bytes"] for row in sampler.report()}
    assert list(peaks)[:3] == ["small", "big", "after"]
    assert peaks["big"] - peaks["small"] >= 48 << 20


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RssSampler(lambda: "x", interval_s=interval)


@linux
def test_release_freed_memory_returns_heap_pages() -> None:
    from benchmark.host_memory import release_freed_memory

    assert release_freed_memory() in (True, False)  # glibc or not: never raises
    if not release_freed_memory():
        pytest.skip("not glibc")
    before = read_rss()["anon_bytes"]
    keep, drop = [], []
    for i in range(64):  # 64 KiB chunks interleaved with survivors: heap memory, not single mmaps
        (keep if i % 8 == 0 else drop).append(bytearray(64 << 10) + bytearray(1))
    grown = read_rss()["anon_bytes"]
    drop.clear()
    release_freed_memory()
    assert read_rss()["anon_bytes"] <= grown and grown >= before
