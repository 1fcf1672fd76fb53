"""scripts/probe_gallery_memory.py on a tiny random BLIP2: the real metric and score, stages recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.blip2 import Blip2Retrieval
from tests.script_modules import load_script
from tests.tiny_blip2 import save_tiny_blip2

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a red circle on a blue background", "two small green squares", "a big yellow triangle"]


def _probe_module():
    return load_script(REPO / "scripts" / "probe_gallery_memory.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS from /proc/self/status")
def test_probe_runs_the_metric_and_the_models_score(tmp_path):
    ckpt = save_tiny_blip2(tmp_path / "ckpt", TEXTS, 8, k_test=2)
    model = Blip2Retrieval.load_checkpoint(ckpt)
    n = 21
    with torch.no_grad():
        tokens = model.vision_tokens(torch.rand(n, 3, 16, 16))
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    queries = [{"text": TEXTS[i % 3], "image": i, "relevant": [i, (i + 5) % n]} for i in range(6)]
    (tmp_path / "queries.json").write_text(json.dumps({"queries": queries}))
    out = _probe_module().main(
        [
            "--checkpoint",
            str(ckpt),
            "--features",
            str(tmp_path / "tokens.npy"),
            "--queries-json",
            str(tmp_path / "queries.json"),
            "--n",
            str(n),
            "--batch",
            "4",
            "--read-table",
            "--out",
            str(tmp_path / "probe.json"),
        ]
    )
    stages = {row["stage"] for row in out["by_stage"]}
    assert {"update", "_collect", "score", "itc_score", "rerank_topk", "itm_scores"} <= stages, stages
    assert out["queries"] == 6 and out["gallery_emb_bytes"] == n * 8 * 16 * 4  # 8 queries x embed 16, fp32
    assert out["index_bytes"] == out["gallery_emb_bytes"] + tokens.numel() * 4  # embeddings + the token table
    assert json.loads((tmp_path / "probe.json").read_text())["n"] == n
    assert out["times_s"]["itm_scores"] > 0
