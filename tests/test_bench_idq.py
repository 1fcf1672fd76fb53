"""Smoke test of ``scripts/bench_idq.py`` (ours vs blip2 cost) on tiny random models: every
metric is there, FLOP counts are positive, and fewer queries cost fewer Q-Former FLOPs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_idq.py"


def _load():
    return load_script(SCRIPT)


def test_bench_idq_random_init_reports_every_metric(tmp_path):
    bench = _load()
    out = tmp_path / "bench.json"
    r = bench.main(
        [
            "--random-init",
            "--random-size",
            "small",
            "--random-n-test",
            "8",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--n-instructions",
            "2",
            "--topk",
            "3",
            "--n-queries",
            "4",
            "--index-batch",
            "4",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--warmup",
            "0",
            "--min-time",
            "0",
            "--out",
            str(out),
        ]
    )
    assert set(r["metrics"]) == set(bench.METRICS)
    for key, m in r["metrics"].items():
        assert m["blip2"] > 0 and m["ours"] > 0 and math.isfinite(m["ratio"]), key
        assert (m["pass"] is None) == (m["target"] is None), key
    f = r["flops"]
    assert f["exact_polynomial"] and f["n_instructions"] == r["test_set"]["n_instructions"] == 8 * 5
    assert f["instruction_qscaler_gflops"]["min"] > 0 and f["vision_tower_gflops_per_image"] > 0
    # structural: fewer queries, fewer Q-Former FLOPs; 32 queries cost what BLIP2's 32 do
    blip2_32 = f["blip2_gflops_at_median_T"]
    by_l = {int(k): v for k, v in f["ours_gflops_by_L_at_median_T"].items()}
    assert all(v < blip2_32 for n, v in by_l.items() if n < 32) and by_l[48] > blip2_32
    assert math.isclose(by_l[32], blip2_32, rel_tol=0.02)
    lengths = r["lengths"]["ours"]
    assert lengths["max"] <= 48 and lengths["mean"] < 32  # the random QScaler is set around L = 20
    assert r["metrics"]["instr_qformer_gflops"]["ours"] < r["metrics"]["instr_qformer_gflops"]["blip2"]
    assert r["metrics"]["index_emb_bytes"]["ratio"] == 48 / 32  # ours indexes L_max = 48 queries
    assert json.loads(out.read_text())["metrics"].keys() == r["metrics"].keys()


def test_random_base_size_has_blip2_itm_vit_g_shapes():
    """``--random-size base`` measures at the shapes of Salesforce/blip2-itm-vit-g: the Q-Former
    of transformers' default BLIP-2 config (its defaults are that checkpoint's), over ViT-g's
    1408-wide, 257-token output, and the checkpoint's 256-d ITC projections."""
    from transformers import Blip2Config as HfBlip2Config

    from lightning_modules.blip2 import Blip2Config

    vision, qformer = _load().RANDOM_SIZES["base"]
    ours = Blip2Config(cache_features=False, **qformer).qformer_config(100, 0, vision["hidden_size"])
    real = HfBlip2Config()
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "cross_attention_frequency",
        "encoder_hidden_size",
    ):
        assert getattr(ours, field) == getattr(real.qformer_config, field), field
    assert vision["hidden_size"] == real.vision_config.hidden_size
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    assert tokens == (real.vision_config.image_size // real.vision_config.patch_size) ** 2 + 1 == 257
    assert qformer["embed_dim"] == real.image_text_hidden_size
