"""``--task speed``: two models timed side by side (alternating rounds, ratio per round), its
options, the tiny run against the BLIP2 checkpoint ours starts from, the full-size path, and
the claim that reads it."""

from __future__ import annotations

import json
import statistics

import pytest
from typer.testing import CliRunner

import benchmark.measure.throughput as throughput
from benchmark.cli import app
from benchmark.measure.paired import paired_throughput
from benchmark.portable import portable_path
from tests.test_blip2 import BLIP2_ARGS, SMALL, TINY_QFORMER

runner = CliRunner()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rounds_alternate_and_the_ratio_is_taken_within_each_round(monkeypatch):
    clock, calls = FakeClock(), []
    monkeypatch.setattr(throughput.time, "perf_counter", clock)

    def step(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            clock.now += seconds

        return run

    p = paired_throughput((("a", step("a", 0.2)), ("b", step("b", 0.1))), 8, rounds=4, warmup=2, repeats=5)
    per_model = 1 + 2 + 5  # cold call, warm-up, timed calls
    blocks = [calls[i] for i in range(0, len(calls), per_model)]
    assert len(calls) == 4 * 2 * per_model and blocks == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [a for a, _ in p.rounds] == pytest.approx([40.0] * 4) and [b for _, b in p.rounds] == pytest.approx(
        [80.0] * 4
    )
    assert p.ratio == pytest.approx(0.5) and p.to_dict()["ratio_per_round"] == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match="rounds >= 2"):
        paired_throughput((("a", step("a", 0.1)), ("b", step("b", 0.1))), 8, rounds=1)


@pytest.mark.parametrize(
    "task_args, message",
    [
        ('{"rounds": 1}', "task_args.rounds must be >= 2"),
        ('{"repeats": 3}', "task_args.repeats must be >= 5"),
        ('{"baseline": "nope"}', "task_args.baseline: unknown model 'nope'"),
        ('{"baseline": "ours"}', "ours against itself"),
        ('{"baseline_overrides": {"seed": 3}}', "task_args.baseline_overrides.seed: set by the run itself"),
        ('{"speed": 1}', "unknown option 'task_args.speed'"),
    ],
)
def test_bad_options_exit_2_before_anything_is_trained(tmp_path, task_args, message):
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "ours",
            "--task",
            "speed",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--results-dir",
            str(tmp_path / "results"),
            "--set",
            f"task_args={task_args}",
        ],
    )
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()


def test_full_size_needs_the_baselines_checkpoint(tmp_path):
    """CLIP's checkpoint is not BLIP-2's: the baseline's must be named (ours would default to its own)."""
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "clip",
            "--task",
            "speed",
            "--size",
            "full",
            "--pretrained",
            "x",
            "--results-dir",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "task_args.baseline_overrides.model_args.pretrained" in res.output


def test_tiny_speed_run_times_ours_against_the_blip2_it_starts_from(tmp_path):
    blip2 = {"train": {"max_epochs": 1}, "model_args": BLIP2_ARGS}
    ours_args = TINY_QFORMER | {
        "l_base": 2,
        "l_max": 12,
        "l_init": 8,
        "qscaler_hidden": 16,
        "itm_max_anchors": 8,
        "dependency_overrides": {"blip2_checkpoint": blip2},
    }
    task_args = {"baseline_overrides": blip2, "rounds": 2, "batch_size": 4, "warmup": 1}
    common = [
        "--model",
        "ours",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
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
        f"model_args={json.dumps(ours_args)}",
        "--set",
        "eval.measure=false",
    ]
    res = runner.invoke(app, ["run", *common, "--task", "speed", "--set", f"task_args={json.dumps(task_args)}"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "results" / "ours__synthetic__speed__default.json").read_text())
    m, s = r["metrics"], r["speed"]
    assert s["names"] == ["ours", "blip2"] and s["baseline"] == "blip2" and s["rounds"] == 2
    assert all(v > 0 for v in s["items_per_s"]["ours"] + s["items_per_s"]["blip2"])
    assert m["speed/ratio"] == pytest.approx(statistics.median(s["ratio_per_round"]))
    assert m["speed/ratio_min"] <= m["speed/ratio"] <= m["speed/ratio_max"]
    assert f"ours / blip2 = {m['speed/ratio']:.3f}" in res.output
    # the baseline is the BLIP2 checkpoint ours was trained from: found in the cache, not trained again
    baseline = r["provenance"]["speed"]["baseline"]
    assert baseline["checkpoint"] == r["provenance"]["dependencies"]["blip2_checkpoint"]["checkpoint"]
    assert baseline["trained_this_run"] is False and len(r["provenance"]["speed"]["images"]) == 4
    assert (
        r["speed"]["torch_threads"] == r["environment"]["torch_num_threads"] and r["environment"]["packages"]["torch"]
    )
    # the report's claim reads the side-by-side figure, and the retrieval tables leave the file out
    res = runner.invoke(
        app,
        [
            "report",
            "--results-dir",
            str(tmp_path / "results"),
            "--out-dir",
            str(tmp_path / "rep"),
            "--bootstrap",
            "100",
        ],
    )
    assert res.exit_code == 0, res.output
    claims = (tmp_path / "rep" / "claims.md").read_text()
    assert "Measured side by side in one process (ours\\_\\_synthetic\\_\\_speed\\_\\_default.json)" in claims
    assert "speed\\_\\_default" not in (tmp_path / "rep" / "results.md").read_text()
    assert "1 result file(s) of other tasks (i2i, vqa, speed) left out" in res.output


def test_full_size_speed_run_loads_both_checkpoints_as_they_are(tmp_path):
    from tests.test_blip2 import _hub_style_checkpoint

    _hub_style_checkpoint(tmp_path / "itm", None)
    task_args = {  # the baseline BLIP2 loads ours' own --pretrained (one checkpoint family)
        "rounds": 2,
        "batch_size": 2,
        "warmup": 0,
    }
    res = runner.invoke(
        app,
        [
            "run",
            "--model",
            "ours",
            "--task",
            "speed",
            "--size",
            "full",
            "--pretrained",
            str(tmp_path / "itm"),
            "--epochs",
            "0",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--set",
            f"data.options={SMALL}",
            "--set",
            f"task_args={json.dumps(task_args)}",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "results" / "ours__synthetic__speed__default.json").read_text())
    # a local checkpoint outside the cache, data and results folders is recorded by name and path hash
    assert r["provenance"]["speed"]["baseline"] == {
        "model": "blip2",
        "pretrained": portable_path(str(tmp_path / "itm"), {}),
    }
    assert r["size"] == "full" and r["metrics"]["speed/img_s"] > 0 and r["metrics"]["speed/baseline_img_s"] > 0
