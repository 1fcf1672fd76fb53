"""scripts/bench_gpu.py at tiny scale on the CPU: the full-size loading path of every model,
ours' pinned query length, the report files (the GPU figures themselves need a device)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    try:
        yield load_script(SCRIPT, register=True)  # its dataclasses look their module up there
    finally:
        sys.modules.pop(SCRIPT.stem, None)


@pytest.mark.parametrize(
    "models",
    [
        "clip,ours",
        pytest.param("clip,blip2,ours,dynamicvit,crossget", marks=pytest.mark.slow),
    ],
)
def test_tiny_scale_runs_the_models_through_the_full_size_path(bench_gpu, tmp_path, models):
    report = bench_gpu.main(
        [
            "--scale",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--batch-size",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "5",
            "--min-time",
            "0",
            "--ours-length",
            "5",
            "--rounds",
            "2",
            "--models",
            models,
            "--out-dir",
            str(tmp_path / "out"),
            "--workdir",
            str(tmp_path),
        ]
    )
    assert list(report["models"]) == models.split(",")
    for name, m in report["models"].items():
        assert m["throughput_img_s"] > 0 and m["step_img_s"] > 0, name
        assert m["encode_images"]["batch_size"] == 2 and m["encode_images"]["timed_runs"] >= 5
        assert m["memory_mb"] is None  # no allocator peak on a CPU
        assert len(m["rounds"]) == 2 and min(x["step_img_s"] for x in m["rounds"]) <= m["step_img_s"]
    ours = report["models"]["ours"]
    assert ours["query_lengths"] == {"mean": 5.0, "min": 5, "max": 5} and ours["l_max"] > 32
    assert report["checkpoints"]["blip2"]["num_query_tokens"] == 8
    saved = json.loads((tmp_path / "out" / "gpu_costs.json").read_text())
    assert saved["settings"]["ours_length"] == 5 and saved["environment"]["device"] == "cpu"
    md = (tmp_path / "out" / "gpu_costs.md").read_text()
    assert "| ours |" in md and "| clip |" in md and "52.63" in md


def test_default_ours_length_is_the_reference_mean(bench_gpu, tmp_path):
    ref = tmp_path / "ours.json"
    ref.write_text(json.dumps({"metrics": {"qlen/mean": 10.6}}))
    assert bench_gpu.measured_mean_length(ref) == 10.6
    assert bench_gpu.measured_mean_length(tmp_path / "missing.json") is None
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--models", "ours,nope"])
