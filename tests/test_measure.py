"""Throughput and memory measurement: real timings of real work, fresh-process RSS."""

from __future__ import annotations

import time

import pytest

from benchmark.measure.memory import peak_rss_mb_in_fresh_process
from benchmark.measure.throughput import measure_throughput


def test_throughput_counts_items_per_second_of_the_step():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)

    r = measure_throughput(step, batch_size=4, warmup=2, runs=5, min_time_s=0.0)
    assert r.timed_runs == 5 and len(calls) == 1 + 2 + 5  # cold + warm-up + timed
    assert 200 < r.items_per_s < 4 / 0.01 + 1  # at most 400 items/s for a 10 ms step of 4 items
    assert r.items_per_s_p90 <= r.items_per_s + 1e-9 and r.cold_first_call_s >= 0.01
    assert r.torch_threads >= 1 and r.batch_size == 4


def test_throughput_refuses_fewer_than_five_runs():
    with pytest.raises(ValueError, match="median of at least 5"):
        measure_throughput(lambda: None, batch_size=1, runs=3)


def test_peak_rss_of_a_fresh_process_sees_the_allocation():
    small = peak_rss_mb_in_fresh_process("tests.memory_target:allocate", mb=1)
    big = peak_rss_mb_in_fresh_process("tests.memory_target:allocate", mb=300)
    assert big - small > 250


def test_peak_rss_probe_failure_is_reported():
    with pytest.raises(RuntimeError, match="failed"):
        peak_rss_mb_in_fresh_process("tests.memory_target:no_such_function")
