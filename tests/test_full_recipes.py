"""Full-size recipes (``benchmark/configs/models/full/<model>.json``): every registered model has
one that builds a valid full-size run, ``bench run --size full`` picks it, and the tiny
defaults (and so the tiny results) are exactly as before."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError, RunConfig, build_run_config, from_dict, model_defaults
from benchmark.registry import MODELS

runner = CliRunner()
MODELS_DIR = resources.files("benchmark") / "configs" / "models"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"

#: the recipe values and where they come from (docs: the DESIGN table); checked against the files
RECIPES = {
    # LAVIS lavis/projects/blip2/train/retrieval_coco_ft.yaml: init_lr 1e-5, weight_decay 0.05,
    # max_epoch 5, batch 14 x 16 GPUs, k_test 128; warm-up 1000 of ~12,650 steps
    "blip2": dict(lr=1e-5, weight_decay=0.05, warmup_ratio=0.08, epochs=5, batch=224, k=128),
    # paper: AdamW, 1 epoch; the rest BLIP-2's recipe
    "ours": dict(lr=1e-5, weight_decay=0.05, warmup_ratio=0.08, epochs=1, batch=224, k=128),
    # CrossGET CLIP/configs/retrieval_flickr_clip.yaml: init_lr 1e-5, wd 0.05, 12 epochs, 64 x 8 GPUs
    "clip": dict(lr=1e-5, weight_decay=0.05, warmup_ratio=0.0, epochs=12, batch=512, k=None),
    "crossget": dict(lr=1e-5, weight_decay=0.05, warmup_ratio=0.0, epochs=12, batch=512, k=128),
    # DynamicViT README (DeiT-S): lr 1e-3, 30 epochs, warm-up 5, 128 x 8 GPUs; main.py wd 0.05
    "dynamicvit": dict(lr=1e-3, weight_decay=0.05, warmup_ratio=0.1667, epochs=30, batch=1024, k=128),
}


def _full(model: str, **own) -> RunConfig:
    return build_run_config(
        model_defaults(model, "full"),
        {"model": model, "size": "full", "model_args": {"pretrained": "/ckpt/somewhere"}},
        own,
    )


def test_tiny_defaults_are_the_tiny_files_and_give_the_reference_hashes():
    """The tiny base config is the ``.json`` file, untouched, whatever the new size argument;
    its run config hashes to the shipped reference results' (so tiny results are unchanged)."""
    for model in MODELS.names():
        on_disk = json.loads((MODELS_DIR / f"{model}.json").read_text())
        assert model_defaults(model) == on_disk == model_defaults(model, "tiny")
        assert model_defaults(model, "full") != on_disk
        ref = REFERENCE / f"{model}__synthetic__default.json"
        if ref.is_file():
            stored = json.loads(ref.read_text())
            old = from_dict(RunConfig, stored["config"])
            mine = build_run_config(
                model_defaults(model), {"model": model, "results_dir": old.results_dir, "cache_dir": old.cache_dir}
            )
            assert mine.config_hash() == stored["config_hash"]


def test_bad_size_is_refused():
    with pytest.raises(ConfigError, match="size must be one of"):
        model_defaults("clip", "huge")


def test_a_model_without_a_full_recipe_falls_back_to_its_tiny_file():
    assert model_defaults("no-such-model", "full") == {"model": "no-such-model"}


@pytest.mark.parametrize("model", MODELS.names())
def test_every_full_recipe_builds_a_valid_full_run(model):
    """Like litgpt's config hub test: every shipped recipe, with a pretrained path, is a valid
    full-size run of its model (run config and the model's own config class)."""
    assert (MODELS_DIR / "full" / f"{model}.json").is_file(), f"no full-size recipe for {model}"
    cfg = _full(model)
    assert cfg.size == "full" and cfg.model == model
    model_cfg = from_dict(MODELS.get(model).Config, cfg.model_args, "model_args")
    want = RECIPES[model]
    opt = cfg.train.optim
    assert (opt.lr, opt.weight_decay, opt.warmup_ratio) == (want["lr"], want["weight_decay"], want["warmup_ratio"])
    assert (cfg.train.max_epochs, cfg.data.global_batch_size) == (want["epochs"], want["batch"])
    assert cfg.data.batch_size == want["batch"]  # one process takes the whole global batch
    assert getattr(model_cfg, "k", None) == want["k"]
    assert opt.betas == (0.9, 0.999)  # torch's AdamW default, as LAVIS, CrossGET and DynamicViT (timm) use
    tiny = build_run_config(model_defaults(model), {"model": model})
    assert opt.lr < tiny.train.optim.lr  # the tiny learning rates are far too high for pretrained weights


def test_a_recipe_batch_is_global_whatever_the_processes():
    """The recipes give the global batch (LAVIS: 14 per GPU x 16 GPUs = 224): 8 GPUs x 2 nodes take
    14 each, not 224 each; a count that does not divide it and a per-process batch that contradicts
    it are refused by name."""
    assert _full("blip2", train={"devices": 8, "num_nodes": 2}).data.batch_size == 14
    assert _full("dynamicvit", train={"devices": 8}).data.batch_size == 128
    # the token-reduction recipes backpropagate through the frozen ViT-g (to the predictors / merging):
    # ~55 KB of activations per token and layer in bf16 would not fit 128 images per GPU without it
    assert _full("dynamicvit").train.grad_checkpointing and _full("crossget").train.grad_checkpointing
    with pytest.raises(ConfigError, match=r"data.global_batch_size 224 must be a multiple .* = 3"):
        _full("blip2", train={"devices": 3})
    with pytest.raises(ConfigError, match=r"data.batch_size 32 and data.global_batch_size 224 are both set"):
        _full("blip2", train={"devices": 2}, data={"batch_size": 32})
    assert _full("blip2", train={"devices": 2}, data={"batch_size": 112}).data.batch_size == 112  # agrees
    own = _full("blip2", train={"devices": 2}, data={"batch_size": 32, "global_batch_size": None})
    assert own.data.batch_size == 32  # per process, as given
    again = from_dict(RunConfig, json.loads(json.dumps(dataclasses.asdict(_full("blip2", train={"devices": 4})))))
    assert again.data.batch_size == 56 and again.config_hash() == _full("blip2", train={"devices": 4}).config_hash()
    with pytest.raises(ConfigError, match=r"data.global_batch_size must be an integer in \[1, 1048576\]"):
        _full("blip2", data={"global_batch_size": 0})


def test_full_recipes_name_no_checkpoint():
    """The checkpoint comes from --pretrained (or the reproduce options), never from the recipe."""
    for model in MODELS.names():
        assert "pretrained" not in model_defaults(model, "full").get("model_args", {})


def test_bench_run_size_full_uses_the_full_recipe(tmp_path):
    """A tiny random hub-style BLIP-2 checkpoint through ``bench run --size full``: the stored
    config holds the full recipe (lr 1e-5, batch 224), the tiny run the tiny one."""
    from tests.test_blip2 import _hub_style_checkpoint

    ckpt = tmp_path / "hub"
    _hub_style_checkpoint(ckpt, None)
    common = [
        "run",
        "--model",
        "blip2",
        "--epochs",
        "0",
        "--results-dir",
        str(tmp_path / "res"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        "--set",
        "data.max_eval_images=4",
        "--set",
        "eval.measure=false",
    ]
    res = runner.invoke(app, [*common, "--size", "full", "--pretrained", str(ckpt), "--tag", "full"])
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "res" / "blip2__synthetic__full.json").read_text())["config"]
    assert stored["train"]["optim"]["lr"] == 1e-5 and stored["data"]["batch_size"] == 224
    assert stored["model_args"]["k_test"] == 128 and stored["size"] == "full"
    # the architecture that ran is the checkpoint's (model_config's tiny fields do not apply)
    result = json.loads((tmp_path / "res" / "blip2__synthetic__full.json").read_text())
    record = result["provenance"]["pretrained"]
    assert record["config_sha256"] == hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest()
    assert record["architecture"]["num_query_tokens"] == 8 and record["architecture"]["model_type"] == "blip-2"
    assert record["architecture"]["vision_config.hidden_size"] == 32
    assert result["model_config"]["num_query_tokens"] != 8  # what model_config alone would have said
