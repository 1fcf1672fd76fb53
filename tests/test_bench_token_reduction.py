"""Smoke test of ``scripts/bench_token_reduction.py`` (token-reduction vision cost) on the tiny
random encoder: every model is timed in every round, the ratios are the per-round ones, the
FLOP and dispatch counts are there, the JSON is written, and bad options are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_token_reduction.py"


def _load():
    return load_script(SCRIPT, register=True)


def test_bench_token_reduction_reports_side_by_side_ratios(tmp_path):
    bench = _load()
    out = tmp_path / "bench.json"
    r = bench.main(
        [
            "--random",
            "--depth",
            "4",
            "--batch-sizes",
            "2",
            "--repeats",
            "3",
            "--warmup",
            "0",
            "--flop-batches",
            "1",
            "--flop-batch-size",
            "1",
            "--threads",
            "1",
            "--check",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert r["r"] == bench.DEFAULT_R and r["encoder"] == "tiny"
    assert all(v < 1e-4 for k, v in r["check_max_abs_diff"].items() if k != "reference max |x|")
    flops = r["flops"]
    assert flops["unpruned"]["ratio"] == 1.0 and flops["dynamicvit"]["ratio"] < 0.8 and flops["crossget"]["ratio"] < 0.8
    ops = r["ops_per_forward"]
    assert all(0 < v["kernels"] <= v["ops"] for v in ops.values()) and ops["crossget"]["ops"] > ops["unpruned"]["ops"]
    timing = r["timing"]["2"]
    base = timing["unpruned"]["times_s"]
    assert timing["unpruned"]["time_ratio_median"] == 1.0
    for name, t in timing.items():
        assert len(t["times_s"]) == 3 and t["min_s"] <= t["median_s"] <= t["max_s"]
        ratios = sorted(a / b for a, b in zip(t["times_s"], base))
        assert math.isclose(t["time_ratio_median"], ratios[1]), name
        assert (t["time_ratio_min"], t["time_ratio_max"]) == (ratios[0], ratios[-1])
        assert t["fastest_ratio"] == min(t["times_s"]) / min(base)
        assert len(t["cpu_times_s"]) == 3 and t["cpu_ratio_min"] <= t["cpu_ratio_median"] <= t["cpu_ratio_max"]


def test_encoder_presets_state_their_crossget_r():
    bench = _load()
    assert set(bench.ENCODERS) == {"tiny", "vit-b", "vit-g"}
    assert bench.ENCODERS["vit-b"].r == 16 and bench.ENCODERS["tiny"].r == bench.DEFAULT_R
    from lightning_modules.crossget_model import FULL_R

    assert bench.ENCODERS["vit-g"].r == FULL_R
    model, _ = bench.ENCODERS["vit-b"].build("cpu", 1, None)
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 1
    assert model.embeddings.num_patches == 196


@pytest.mark.parametrize(
    "argv",
    [
        ["--keep-rate", "nan"],
        ["--keep-rate", "1.5"],
        ["--r", "-1"],
        ["--repeats", "0"],
        ["--warmup", "-1"],
        ["--depth", "0"],
    ],
)
def test_bad_options_are_refused(argv):
    with pytest.raises(SystemExit):
        _load().parse_args(argv)
