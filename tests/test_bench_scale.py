"""``scripts/bench_scale.py`` (issue 24 item 5) at tiny sizes on random tiny checkpoints: the scale
folder holds exactly what the SynthScenes generator writes (same PNG bytes; the first queries with
the generator's relevance), and a two-size run through the real evaluation path reports every
field, with the feature cache shared by the two models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"
TEXTS = [
    "Find images of a red circle.",
    "Show me a small blue square on a black background.",
    "a green triangle left of a yellow star",
    "Search for a large purple ring at the top.",
]


def _load():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Random tiny BLIP2 (feature cache on, k_test 3) and an IDQ-Former built on it."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
    from lightning_modules.components.image_transform import ImageTransform
    from lightning_modules.components.qformer_head import HeadShape, QFormerHead
    from lightning_modules.components.vision_tower import ClipVisionTower
    from lightning_modules.components.word_tokenizer import build_word_tokenizer
    from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
    from lightning_modules.optim import OptimConfig

    root = tmp_path_factory.mktemp("scale_ckpt")
    torch.manual_seed(0)
    tower = ClipVisionTower(
        CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=8,
            )
        ),
        ImageTransform(16, 16),
    )
    cfg = Blip2Config(
        qformer_hidden=32,
        qformer_layers=1,
        qformer_heads=4,
        qformer_intermediate=64,
        embed_dim=16,
        num_query_tokens=8,
        dropout=0.0,
        k_test=3,
        cache_features=True,
    )
    tok = build_word_tokenizer(TEXTS, cfg.text_length)
    head = QFormerHead.random(
        cfg.qformer_config(len(tok), tok.pad_token_id, tower.hidden_size),
        HeadShape(cfg.num_query_tokens, cfg.embed_dim, cfg.temp_init),
        seed=0,
    )
    blip2_dir = root / "blip2"
    Blip2Retrieval(tower, head, tok, cfg).save_checkpoint(blip2_dir)
    ours = IdqFormerRetrieval.create(
        IdqConfig(blip2_checkpoint=str(blip2_dir), cache_features=True, dropout=0.0, qscaler_encoder="qformer"),
        OptimConfig(),
    )
    ours_dir = root / "ours"
    ours.save_checkpoint(ours_dir)
    return {"blip2": str(blip2_dir), "ours": str(ours_dir)}


def test_scale_folder_matches_the_generator(tmp_path):
    """Same PNG bytes as ``generate`` at n_test = N, and the first queries carry the generator's
    own captions and relevance (over the whole split)."""
    from datamodules.synthetic.annotations import annotation_path
    from datamodules.synthetic.generation import generate
    from datamodules.synthetic.options import SyntheticOptions

    bench = _load()
    n, q = 30, 12
    folder = bench.scale_folder(tmp_path / "scale", n, q)
    bench.write_scale_data(folder, n, q, workers=2)
    full = generate(SyntheticOptions(n_train=1, n_val=1, n_test=n), tmp_path / "full", workers=1)
    for i in range(n):
        name = f"images/test/test_{i:06d}.png"
        assert (folder / name).read_bytes() == (full / name).read_bytes(), name
    doc = json.loads((folder / "queries.json").read_text())
    reference = json.loads(annotation_path(full, "test").read_text())["images"]
    expected = [(i, c) for i, img in enumerate(reference) for c in img["captions"]][:q]
    assert len(doc["queries"]) == q
    for got, (i, c) in zip(doc["queries"], expected, strict=True):
        assert (got["image"], got["text"], got["complexity"], got["constraints"]) == (
            i,
            c["text"],
            c["complexity"],
            c["constraints"],
        )
        assert [f"test_{j:06d}" for j in got["relevant"]] == c["relevant_image_ids"]
    # the DataModule serves N gallery images and exactly the q queries, relevance as written
    dm = bench.scale_datamodule_class()(
        __import__("datamodules.datamodule", fromlist=["DataConfig"]).DataConfig(options={"n_test": n}), 0, folder
    )
    es = dm.eval_set("test")
    assert (es.n_images, es.n_queries) == (n, q)
    assert [es.relevance["t2i"].row(k).tolist() for k in range(q)] == [d["relevant"] for d in doc["queries"]]


def test_bench_scale_two_sizes_reports_every_field(tmp_path, checkpoints):
    bench = _load()
    out = tmp_path / "scale.json"
    cache = tmp_path / "cache"
    r = bench.main(
        [
            "--sizes",
            "40,80",
            "--queries",
            "20",
            "--threads",
            "1",
            "--cache-dir",
            str(cache),
            "--blip2-checkpoint",
            checkpoints["blip2"],
            "--ours-checkpoint",
            checkpoints["ours"],
            "--full-generator-max",
            "40",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text())["targets"] == json.loads(json.dumps(r["targets"]))
    for n in (40, 80):
        data = r["results"][str(n)]["data"]
        assert data["data_s"] >= data["render_s"] > 0 and not data["cached"]
        assert ("full_generator_s" in data) == (n <= 40)
        for model in ("blip2", "ours"):
            run = r["results"][str(n)]["models"][model]
            assert (run["n_gallery"], run["n_queries"]) == (n, 20)
            s = run["stages"]
            for key in (
                "encode_images_s",
                "encode_texts_s",
                "first_stage_s",
                "rerank_s",
                "itm_passes_s",
                "score_and_rank_s",
                "total_s",
            ):
                assert s[key] > 0, (n, model, key)
            assert s["rerank_s"] >= s["itm_passes_s"] and s["itc_variant_s"] > 0
            assert run["calls"]["itm_scores_calls"] >= 1 and run["calls"]["score_calls"] == 1
            # blip2 runs first: it extracts the frozen tokens, ours (same tower) finds them cached
            assert run["feature_cache_hit"] == (model == "ours"), (n, model)
            assert (s["feature_extract_s"] > 0) == (model == "blip2")
            assert run["index_bytes"] == run["index_bytes_per_image"] * n > 0
            assert 0 <= run["t2i_R@1"] <= run["t2i_R@5"] <= 1
            assert run["rss"]["self_bytes"] > 0 and run["child_wall_s"] >= s["total_s"]
            # the sampler saw the stages where the gallery is held: encoding, the metric, scoring
            stages = {row["stage"]: row for row in run["rss_by_stage"]}
            assert {"test_step", "score"} <= set(stages) or {"test_step", "itc_score"} <= set(stages), stages
            assert all(row["rss_bytes"] >= row["anon_bytes"] > 0 for row in stages.values())
    # ours indexes more queries per image (L_max) than BLIP2's 8 over the same vision tokens
    per_image = {m: r["results"]["40"]["models"][m]["index_bytes_per_image"] for m in ("blip2", "ours")}
    assert per_image["ours"] > per_image["blip2"]
    t = r["targets"]
    for model in ("blip2", "ours"):
        (row,) = t["per_query_scaling"][model]
        assert (
            row["size_ratio"] == 2 and math.isfinite(row["scoring_ratio"]) and row["ok"] == (row["scoring_ratio"] <= 2)
        )
        assert set(t["rss"][model]) == {"40", "80"}
    assert t["time_largest"]["size"] == 80 and t["time_largest"]["everything_s"] > 0
    # the outputs of separate runs (one size each) merge into the same targets
    parts = []
    for n in ("80", "40"):
        part = json.loads(out.read_text())
        part["results"] = {n: part["results"][n]}
        parts.append(tmp_path / f"part{n}.json")
        parts[-1].write_text(json.dumps(part))
    merged = bench.main(["--merge", *map(str, parts), "--out", str(tmp_path / "merged.json")])
    assert merged["targets"] == json.loads(json.dumps(r["targets"])) and merged["config"]["sizes"] == [40, 80]
    assert json.loads((tmp_path / "merged.json").read_text())["targets"] == merged["targets"]
    # a second run reuses the scale folder and reports the time it took to write it
    again = bench.prepare_data(40, 20, cache / "scale", 1, 0)
    assert again["cached"] and again["data_s"] == r["results"]["40"]["data"]["data_s"]


def test_bench_scale_refuses_bad_options():
    bench = _load()
    for argv in (
        ["--sizes", "0"],
        ["--sizes", "a,b"],
        ["--models", "clip"],
        ["--queries", "0"],
        ["--threads", "0"],
        ["--timeout", "nan"],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
