"""``--model dynamicvit`` and ``--model crossget`` on a tiny in-test BLIP2 checkpoint.

A 4-layer CLIP vision tower (32 px, patch 8: 16 patches + CLS) under a 2-layer Q-Former with
8 queries: both baselines must reproduce BLIP2's scores when they reduce nothing, really
hand the Q-Former fewer tokens otherwise, train only their own parameters, survive a
checkpoint round trip, and (CrossGET) state their mode in the result file.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from benchmark.cli import app
from datamodules.batch import TrainBatch
from lightning_modules.base import RetrievalModel
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.components import image_attention
from lightning_modules.components.vision_tower import LoadingError
from lightning_modules.crossget_model import CrossGETConfig, CrossGETRetrieval
from lightning_modules.dynamicvit_model import DynamicViTConfig, DynamicViTRetrieval
from lightning_modules.optim import OptimConfig
from tests.tiny_blip2 import save_tiny_blip2

TEXTS = [
    "find images of a red circle",
    "a large blue square left of a green star",
    "show me a yellow cross",
    "two purple triangles on a striped background",
]
NQ, PATCHES = 8, 16
MODELS = {"dynamicvit": (DynamicViTRetrieval, DynamicViTConfig), "crossget": (CrossGETRetrieval, CrossGETConfig)}
#: what reduces nothing, per method
IDENTITY = {"dynamicvit": {"keep_rate": 1.0}, "crossget": {"r": 0}}


@pytest.fixture(scope="module")
def blip2_checkpoint(tmp_path_factory):
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"), TEXTS, NQ, vision_layers=4, image_size=32, k_test=2)


def _model(name: str, ckpt, **kw):
    torch.manual_seed(0)
    cls, config = MODELS[name]
    return cls.create(config(blip2_checkpoint=str(ckpt), k_test=2, **kw), OptimConfig())


def _pixels(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _scores(m, px=None):
    m.eval()
    with torch.no_grad():
        img, txt = m.encode_images(_pixels() if px is None else px), m.encode_texts(TEXTS)
        return {
            "emb": img.emb,
            "t2i": m.score(txt, img),
            "i2t": m.score(img, txt),
            "i2i": m.score(img, img),
            "itc": m.score_variants()["itc"](txt, img),
        }


def _cross_attention_inputs(m) -> list[tuple[int, ...]]:
    """Records the shape of the image tokens the Q-Former's cross-attention reads."""
    seen: list[tuple[int, ...]] = []
    layer = next(lay for lay in m.head.qformer.encoder.layer if lay.has_cross_attention)
    layer.crossattention.attention.key.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    return seen


# -- faithfulness ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,extra", [("dynamicvit", {}), ("crossget", {}), ("crossget", {"proportional_attention": True})]
)
def test_reducing_nothing_gives_the_blip2_scores(blip2_checkpoint, name, extra):
    m = _model(name, blip2_checkpoint, **IDENTITY[name], **extra)
    assert isinstance(m, RetrievalModel)
    ref = _scores(Blip2Retrieval.load_checkpoint(blip2_checkpoint))
    got = _scores(m)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-5, rtol=0, msg=f"{name} {extra}: {key}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_hands_the_qformer_fewer_tokens(blip2_checkpoint, name):
    m = _model(name, blip2_checkpoint).eval()
    expected = 1 + m.reducer.keep_counts[-1] if name == "dynamicvit" else m.reducer.output_tokens()
    assert expected < 1 + PATCHES
    seen = _cross_attention_inputs(m)
    with torch.no_grad():
        img, txt = m.encode_images(_pixels()), m.encode_texts(TEXTS)
        assert img.extra["image_tokens"].shape[:2] == (3, expected)
        assert seen[-1] == (3, expected, 32)  # the gallery pass reads the reduced tokens
        m.score(txt, img)  # ITM re-ranking reads them too
    assert seen[-1][1] == expected
    if name == "dynamicvit":
        assert m.reducer.last_tokens_per_layer == m.reducer.tokens_per_layer() == [17, 12, 8, 6]
        assert m.method_config()["keep_counts"] == [11, 7, 5]
    else:
        assert m.reducer.last_tokens_per_layer == m.reducer.tokens_per_layer()
        assert m.reducer.last_sizes.sum(1).eq(1 + PATCHES).all()  # merging keeps the total size


def test_crossget_proportional_attention_reaches_the_qformer(blip2_checkpoint):
    plain = _scores(_model("crossget", blip2_checkpoint))
    prop_model = _model("crossget", blip2_checkpoint, proportional_attention=True).eval()
    with torch.no_grad():
        img = prop_model.encode_images(_pixels())
        _tokens, bias = image_attention.unpack(img.extra["image_tokens"])
    assert torch.allclose(bias.exp().sum(1), torch.full((3,), float(1 + PATCHES)))  # log sizes travel along
    assert bias.max() > 0  # some token stands for more than one patch
    prop = _scores(prop_model)
    assert not torch.allclose(prop["emb"], plain["emb"])
    assert not torch.allclose(prop["t2i"], plain["t2i"])


def test_dynamicvit_training_mask_hides_dropped_tokens_from_the_qformer(blip2_checkpoint):
    """The masked cross-attention (with a straight-through gradient) equals the hard mask
    in value, and all-ones equals the head's own pass."""
    m = _model("dynamicvit", blip2_checkpoint).train()
    out = m.reducer.forward_train(_pixels(4))
    assert (out.keep_mask[:, 1:] == 0).any() and (out.keep_mask[:, 0] == 1).all()
    with image_attention.policy_cross_attention(m.head, out.keep_mask):
        soft = m.head.query_outputs(m.head.query_tokens, out.tokens)
    with torch.no_grad():
        hard = image_attention.query_outputs(
            m.head, m.head.query_tokens, out.tokens, image_attention.keep_bias(out.keep_mask)
        )
        plain = m.head.query_outputs(m.head.query_tokens, out.tokens)
        with image_attention.policy_cross_attention(m.head, torch.ones_like(out.keep_mask)):
            ones = m.head.query_outputs(m.head.query_tokens, out.tokens)
    torch.testing.assert_close(soft.detach(), hard, atol=1e-5, rtol=0)
    torch.testing.assert_close(ones, plain, atol=1e-5, rtol=0)
    assert not torch.allclose(hard, plain, atol=1e-3)
    soft.square().sum().backward()
    assert m.reducer.predictors[-1].out_conv[-2].weight.grad.abs().sum() > 0
    assert "forward" not in vars(m.head.qformer.encoder.layer[0].crossattention.attention)  # patch removed


# -- training ----------------------------------------------------------------------------
def _train(m, steps: int = 3) -> dict:
    m.train()
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    batch = TrainBatch(torch.tensor([0, 1, 2, 3]), _pixels(4, seed=2), TEXTS)
    for _ in range(steps):
        losses = m._losses(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return losses


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_moves_the_method_parameters_and_not_the_backbone(blip2_checkpoint, name):
    m = _model(name, blip2_checkpoint)
    backbone = {k: v.clone() for k, v in m.vision_tower.state_dict().items()}
    head = {k: v.clone() for k, v in m.head.state_dict().items()}
    method = {k: v.clone() for k, v in m.reduction_state_dict().items()}
    losses = _train(m)
    assert torch.isfinite(losses["loss"])
    if name == "dynamicvit":
        assert {"itc", "ratio", "embedding_distill", "token_distill"} <= set(losses)
    else:
        assert set(losses) == {"alignment", "loss"}  # frozen Q-Former, hidden cross token: ITC trains nothing
        assert m.method_config()["guidance"] == "cross-guided"
    moved = [k for k, v in m.reduction_state_dict().items() if not torch.equal(v, method[k])]
    assert moved, "no parameter of the method moved"
    assert all(torch.equal(v, backbone[k]) for k, v in m.vision_tower.state_dict().items())
    assert all(torch.equal(v, head[k]) for k, v in m.head.state_dict().items())
    assert all(p.grad is None for p in [*m.vision_tower.parameters(), *m.head.parameters()])
    assert not m.vision_tower.model.training and not m.head.training  # frozen parts stay in eval mode


@pytest.mark.parametrize("name", sorted(MODELS))
def test_finetune_qformer_trains_it_and_keeps_the_teacher(blip2_checkpoint, name):
    m = _model(name, blip2_checkpoint, finetune_qformer=True)
    before = m.head.qformer.layernorm.weight.clone()
    losses = _train(m, steps=2)
    assert "itc" in losses
    assert not torch.equal(m.head.qformer.layernorm.weight, before)
    assert m.head.training
    assert torch.equal(m.teacher_head.qformer.layernorm.weight, before)  # the unpruned teacher stays frozen


# -- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("name,extra", [("dynamicvit", {}), ("crossget", {"proportional_attention": True})])
def test_checkpoint_round_trip_gives_identical_scores(blip2_checkpoint, tmp_path, name, extra):
    m = _model(name, blip2_checkpoint, **extra)
    _train(m, steps=2)
    m.save_checkpoint(tmp_path / name)
    assert (tmp_path / name / f"{name}.safetensors").is_file()
    back = MODELS[name][0].load_checkpoint(tmp_path / name)
    assert back.config == m.config and back.method_config() == m.method_config()
    a, b = _scores(m), _scores(back)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", list(MODELS))
def test_resume_point_leaves_out_the_frozen_backbone_under_every_name(blip2_checkpoint, name):
    """The reducer wraps the tower's modules (``reducer.runner.vision.*``): a resume point must not
    carry the frozen backbone under that second name either (3.9 GB per epoch at ViT-g), and
    loading it must restore a state dict that the model takes strictly."""
    m = _model(name, blip2_checkpoint)
    _train(m, steps=1)
    tower_ids = {id(p) for p in m.vision_tower.parameters()}
    aliases = [k for k, v in m.state_dict(keep_vars=True).items() if id(v) in tower_ids]
    assert any(not k.startswith("vision_tower.") for k in aliases)  # the case this test is about
    checkpoint = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    assert not set(aliases) & set(checkpoint["state_dict"])
    assert any(k.startswith("reducer.") for k in checkpoint["state_dict"])  # the method's own parameters stay
    fresh = _model(name, blip2_checkpoint)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    a, b = _scores(m), _scores(fresh)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loading_is_strict(blip2_checkpoint, tmp_path):
    m = _model("crossget", blip2_checkpoint)
    m.save_checkpoint(tmp_path / "cg")
    path = tmp_path / "cg" / "crossget.safetensors"
    state = load_file(path)
    save_file(state | {"reducer.extra": torch.zeros(1)}, path)
    with pytest.raises(LoadingError, match="unused"):
        CrossGETRetrieval.load_checkpoint(tmp_path / "cg")
    save_file({k: v for k, v in state.items() if k != "cross_projection.bias"}, path)
    with pytest.raises(LoadingError, match="missing"):
        CrossGETRetrieval.load_checkpoint(tmp_path / "cg")


def test_config_validation(blip2_checkpoint):
    with pytest.raises(ValueError, match="cache_features"):
        DynamicViTConfig(cache_features=True)
    with pytest.raises(ValueError, match="keep_rate"):
        DynamicViTConfig(keep_rate=0.0)
    with pytest.raises(ValueError, match="model_args.r"):
        CrossGETConfig(r=-1)
    with pytest.raises(ValueError, match="blip2_checkpoint"):
        DynamicViTRetrieval.create(DynamicViTConfig(), OptimConfig())
    assert CrossGETConfig().merge_r == 6 and CrossGETConfig(pretrained="x").merge_r == 5
    m = _model("dynamicvit", blip2_checkpoint)
    with pytest.raises(ValueError, match="needs pixels"):
        m.encode_images(torch.zeros(2, 17, 32))
    assert m.item_loader(blip2_checkpoint) is None


# -- end to end --------------------------------------------------------------------------
SMALL = '{"n_train": 64, "n_val": 16, "n_test": 24}'
CLIP_DEP = {
    "vision_checkpoint": {
        "train": {"max_epochs": 1},
        "model_args": {"vision_layers": 4, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16},
    }
}
BLIP2_DEP = {
    "blip2_checkpoint": {
        "train": {"max_epochs": 1},
        "model_args": {
            "qformer_hidden": 32,
            "qformer_layers": 2,
            "qformer_heads": 2,
            "qformer_intermediate": 64,
            "embed_dim": 16,
            "num_query_tokens": 8,
            "itm_max_anchors": 8,
            "dependency_overrides": CLIP_DEP,
        },
    }
}


def test_bench_run_records_the_method_and_the_crossget_mode(tmp_path):
    runner = CliRunner()

    def run(model: str, epochs: int, tag: str, *extra: str) -> dict:
        res = runner.invoke(
            app,
            [
                "run",
                "--model",
                model,
                "--dataset",
                "synthetic",
                "--epochs",
                str(epochs),
                "--tag",
                tag,
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
                f"model_args={json.dumps({'k_test': 2, 'dependency_overrides': BLIP2_DEP})}",
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / "results" / f"{model}__synthetic__{tag}.json").read_text())

    untrained = run("crossget", 0, "untrained", "--set", "eval.measure=false")
    # the reduced tokens re-ranking reads, kept in a file instead of memory: the same numbers
    spilled = run("crossget", 0, "spilled", "--set", "eval.measure=false", "--set", "eval.memmap_min_mb=0")
    assert spilled["metrics"] == untrained["metrics"] and spilled["per_query"] == untrained["per_query"]
    assert untrained["metrics"]["index/bytes_per_image"] > 0
    assert (tmp_path / "cache" / "eval-spill").is_dir() and not any((tmp_path / "cache" / "eval-spill").iterdir())
    trained = run("crossget", 1, "trained")
    assert untrained["method"]["guidance"] == "self-guided" and trained["method"]["guidance"] == "cross-guided"
    assert trained["method"]["r"] == 6 and trained["method"]["output_tokens"] == 13
    assert trained["provenance"]["dependencies"]["blip2_checkpoint"]["model"] == "blip2"
    assert "features" not in trained["provenance"]  # no frozen-feature cache
    assert 0.0 <= trained["metrics"]["t2i/R@5"] <= 1.0
    dvit = run("dynamicvit", 1, "trained", "--set", "eval.measure=false")
    assert dvit["method"]["method"] == "dynamicvit" and dvit["method"]["keep_counts"] == [25, 17, 12]
    assert dvit["provenance"]["trained_this_run"] is True
