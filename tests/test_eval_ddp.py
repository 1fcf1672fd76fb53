"""Distributed evaluation end to end: ``bench run --devices 2 --strategy ddp`` (2 gloo CPU
processes) gives the metrics and per-query ranks of one process, bit for bit, for blip2 and
ours on trained tiny checkpoints (ITM re-ranking included).

Each rank encodes whole batches (``datamodules.sharding.RankBatches``) and scores every
second chunk of queries; the per-query results are summed over the ranks. The checkpoints
are trained once, in one process; the two-process runs evaluate them (``--checkpoint``) from
a cache of their own, so they also extract the frozen features in two processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.portable import resolve
from tests.test_blip2 import BLIP2_ARGS, SMALL, TINY_QFORMER

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
OURS_ARGS = TINY_QFORMER | {
    "l_base": 2,
    "l_max": 12,
    "l_init": 8,
    "qscaler_hidden": 16,
    "itm_max_anchors": 8,
    "dependency_overrides": {"blip2_checkpoint": {"train": {"max_epochs": 1}, "model_args": BLIP2_ARGS}},
}
# k_test 6 of 24 images: re-ranking changes ranks; chunks of 32 queries: 120 captions make 4 chunks,
# two per rank; batches of 16: the ranks encode different, whole batches
COMMON = [
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--no-progress",
    "--set",
    f"data.options={SMALL}",
    "--set",
    "data.batch_size=32",
    "--set",
    "data.eval_batch_size=16",
    "--set",
    "eval.measure=false",
    "--set",
    "eval.chunk_size=32",
    "--set",
    "train.accelerator=cpu",
]


def _args(model: str, results: Path, cache: Path) -> list[str]:
    model_args = (OURS_ARGS if model == "ours" else BLIP2_ARGS) | {"k_test": 6}
    return [
        "run",
        "--model",
        model,
        *COMMON,
        "--results-dir",
        str(results),
        "--cache-dir",
        str(cache),
        "--set",
        f"model_args={json.dumps(model_args)}",
    ]


def _two_processes(args: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args, "--devices", "2", "--strategy", "ddp"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow  # ~2 min: three tiny trainings, then four runs (two of 2 processes)
def test_two_process_evaluation_equals_one_process(tmp_path):
    cache = tmp_path / "cache"
    for model in ("ours", "blip2"):  # ours trains CLIP, BLIP2 and itself; blip2 then loads its checkpoint
        res = runner.invoke(app, _args(model, tmp_path / "one", cache))
        assert res.exit_code == 0, res.output
    for model in ("ours", "blip2"):
        one = json.loads((tmp_path / "one" / f"{model}__synthetic__default.json").read_text())
        # the checkpoint the 1-process run trained, evaluated by 2 processes (trained under DDP, a
        # checkpoint would be another one: the device count is part of the training config)
        # a cache of their own: the two processes also extract the frozen features themselves, each rank
        # writing the rows of its batches into the one shared file
        printed = _two_processes(
            _args(model, tmp_path / "two", tmp_path / "cache2")
            + ["--checkpoint", str(resolve(one["provenance"]["checkpoint"], {"cache": cache}))],
            tmp_path,
        )
        assert printed.count("wrote ") == 1, printed  # rank 0 alone writes the file and says so
        two = json.loads((tmp_path / "two" / f"{model}__synthetic__default.json").read_text())
        assert one["evaluation"]["world_size"] == 1 and two["evaluation"]["world_size"] == 2
        assert two["provenance"]["trained_this_run"] is False
        if model == "ours":  # the first 2-process run extracts the test split's features, blip2's reads them
            assert two["provenance"]["features"]["test"]["hit"] is False
        assert two["metrics"] == one["metrics"], model
        assert two["per_query"] == one["per_query"], model
        assert 0.0 <= one["metrics"]["t2i/R@5"] <= 1.0 and one["metrics"]["t2i/n_queries"] == 120
        if model == "ours":  # re-ranking was at work: it changed ranks against the ITC-only variant (the
            # 1-epoch BLIP2's ITM head sits at its prior and leaves the ITC order as it is)
            assert one["per_query"]["t2i/rank"] != one["per_query"]["itc/t2i/rank"]
