"""``bench run --model ours`` end to end on a small SynthScenes: CLIP -> BLIP2 -> ours, qlen recorded."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.portable import resolve
from tests.test_blip2 import BLIP2_ARGS, SMALL, TINY_QFORMER

runner = CliRunner()


def test_bench_run_ours_records_query_lengths(tmp_path):
    blip2_dep = {"blip2_checkpoint": {"train": {"max_epochs": 1}, "model_args": BLIP2_ARGS}}
    ours_args = TINY_QFORMER | {
        "l_base": 2,
        "l_max": 12,
        "l_init": 8,
        "qscaler_hidden": 16,
        "itm_max_anchors": 8,
        "dependency_overrides": blip2_dep,
    }
    res = runner.invoke(
        app,
        [
            "run",
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
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "results" / "ours__synthetic__default.json").read_text())
    m = r["metrics"]
    assert 2 <= m["qlen/min"] <= m["qlen/mean"] <= m["qlen/max"] <= 12
    assert {f"qlen/level_{k}" for k in range(1, 6)} <= set(m)
    assert abs(sum(v for k, v in m.items() if k.startswith("qlen/hist_")) - 1.0) < 1e-9
    assert len(r["per_query"]["text_lengths"]) == 24 * 5 and 0.0 <= m["t2i/R@5"] <= 1.0
    assert r["provenance"]["dependencies"]["blip2_checkpoint"]["model"] == "blip2"
    # the QScaler reads the text tower of the CLIP under BLIP2's vision tower: no second CLIP is
    # trained, and the checkpoint carries that encoder's folder
    clips = sorted((tmp_path / "cache" / "checkpoints").glob("clip__*"))
    assert len(clips) == 1
    encoder = resolve(r["provenance"]["checkpoint"], {"cache": tmp_path / "cache"}) / "qscaler_encoder"
    assert (encoder / "model.safetensors").read_bytes() == (clips[0] / "model.safetensors").read_bytes()
