"""BLIP2: the full-size loading path against transformers, the protocol, re-ranking, losses,
the feature cache, the suite checkpoint and ``bench run --model blip2`` end to end."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Blip2Config as HFBlip2Config
from transformers import Blip2ForImageTextRetrieval, BlipImageProcessor
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.extraction import LightningExtractor
from benchmark.portable import resolve
from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, RetrievalModel, max_sim
from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.components import feature_cache
from lightning_modules.components.blip2_losses import (
    ItcBlocks,
    itc_loss,
    itc_similarities,
    itm_pairs,
    sample_hard_negatives,
)
from lightning_modules.components.feature_cache import CacheSpaceError, FeatureCache
from lightning_modules.components.qformer_head import EXTRA_PARAMETERS
from lightning_modules.components.rerank import rerank_topk
from lightning_modules.components.vision_tower import ClipVisionTower, LoadingError
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.optim import OptimConfig

TEXTS = ["find images of a red circle", "a large blue square left of a green star", "show me a yellow cross"]
TINY_CLIP = dict(
    image_size=32, patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=2, embed_dim=16
)
TINY_QFORMER = dict(
    qformer_hidden=32,
    qformer_layers=2,
    qformer_heads=2,
    qformer_intermediate=64,
    embed_dim=16,
    num_query_tokens=8,
    k_test=2,
)


@pytest.fixture
def clip_dir(tmp_path):
    torch.manual_seed(0)
    clip = ClipRetrieval.create(ClipConfig(**TINY_CLIP), OptimConfig(), TEXTS)
    clip.save_checkpoint(tmp_path / "clip")
    return tmp_path / "clip"


def _tiny(clip_dir, **kw) -> Blip2Retrieval:
    torch.manual_seed(0)
    cfg = Blip2Config(vision_checkpoint=str(clip_dir), **(TINY_QFORMER | kw))
    return Blip2Retrieval.create(cfg, OptimConfig(), TEXTS)


# -- protocol --------------------------------------------------------------------------
def test_honours_the_retrieval_protocol(clip_dir):
    m = _tiny(clip_dir).eval()
    assert isinstance(m, RetrievalModel)
    px = torch.stack([m.image_transform()(Image.new("RGBA", (50, 37), (255, 0, 0, 128))) for _ in range(2)])
    assert px.shape == (2, 3, 32, 32)
    with torch.no_grad():
        img, txt = m.encode_images(px), m.encode_texts(TEXTS)
        assert img.emb.shape == (2, 8, 16) and txt.emb.shape == (3, 16)
        assert torch.allclose(img.emb.norm(dim=-1), torch.ones(2, 8), atol=1e-5)
        assert img.extra["image_tokens"].shape == (2, 1 + 16, 32)  # CLS + 4x4 patches, all tokens
        assert txt.extra["input_ids"].shape == (3, 48)  # padded to one width for every batch
        itc = m.score_variants()["itc"](txt, img)
        assert torch.allclose(itc, max_sim(txt, img), atol=1e-6)  # ITC = max over the query outputs
        t2i, i2t, i2i = m.score(txt, img), m.score(img, txt), m.score(img, img)
        assert t2i.shape == (3, 2) and i2t.shape == (2, 3) and i2i.shape == (2, 2)
        assert torch.allclose(i2i, max_sim(img, img), atol=1e-6)
        # features in place of pixels give the same encodings (the feature-cache path)
        tokens = m.vision_tokens(px)
        assert torch.allclose(m.encode_images(tokens).emb, img.emb, atol=1e-6)
        # chunks of an Encoded carry their extra tensors along
        part = Encoded.cat([txt[0:1], txt[1:3]])
        assert torch.equal(part.extra["input_ids"], txt.extra["input_ids"])
        assert torch.allclose(m.score(txt[1:3], img), t2i[1:3], atol=1e-5)


def test_image_to_image_over_the_same_items_computes_half_the_blocks(clip_dir, monkeypatch):
    """Queries that are the gallery (same storage): the blocks below the diagonal are the
    transposes of those above; the result equals the plain blockwise max_sim exactly."""
    from lightning_modules import blip2 as b2

    g = torch.Generator().manual_seed(0)
    items = Encoded(torch.nn.functional.normalize(torch.randn(11, 4, 8, generator=g), dim=-1))
    plain = max_sim(items, items)
    for step in (1, 3, 11, 20):
        torch.testing.assert_close(b2._symmetric_max_sim(items, step), plain, rtol=0, atol=0)
    assert b2._same_items(items[0:11], items) and not b2._same_items(items[1:11], items)
    assert not b2._same_items(Encoded(items.emb.clone()), items)  # equal values, other storage
    assert not b2._same_items(Encoded(items.emb, torch.full((11,), 2)), Encoded(items.emb, torch.full((11,), 2)))
    calls = []
    monkeypatch.setattr(b2, "max_sim", lambda q, gal: calls.append((len(q), len(gal))) or max_sim(q, gal))
    monkeypatch.setattr(b2, "_MAX_SIM_BUDGET", 3 * 11 * 16)  # 3 query rows per block
    m = _tiny(clip_dir).eval()
    torch.testing.assert_close(m.itc_score(items, items), plain, rtol=0, atol=0)
    assert calls == [(3, 11), (3, 8), (3, 5), (2, 2)]  # each block from the diagonal on
    calls.clear()
    m.itc_score(items, Encoded(items.emb.clone()))
    assert calls == [(3, 11), (3, 11), (3, 11), (2, 11)]


def test_config_validation():
    with pytest.raises(ValueError, match="k_test"):
        Blip2Config(k_test=-1)
    assert Blip2Config().k == 4 and Blip2Config(pretrained="x").k == 128 and Blip2Config(k_test=0).k == 0
    for bad in (0.0, -0.02, 1.5):
        with pytest.raises(ValueError, match="qformer_init_range"):
            Blip2Config(qformer_init_range=bad)


@pytest.mark.parametrize("init_range", [0.02, 0.05])
def test_tiny_qformer_init_std_follows_the_option(clip_dir, init_range):
    """The tiny Q-Former's normal init uses ``qformer_init_range`` (its default 0.05, not BERT's
    0.02, at which the tiny Q-Former's attention stays near-uniform; docs/experiments/tiny-itm.md)."""
    head = _tiny(clip_dir, qformer_init_range=init_range).head
    weights = torch.cat([layer.attention.attention.query.weight.flatten() for layer in head.qformer.encoder.layer])
    assert head.qformer_config.initializer_range == init_range
    assert weights.std().item() == pytest.approx(init_range, rel=0.1)
    assert Blip2Config().qformer_init_range == 0.05


# -- full-size path --------------------------------------------------------------------
def _hub_style_checkpoint(path, image_token_index):
    """A tiny Blip2ForImageTextRetrieval saved like a hub repo: model, tokenizer, image processor."""
    tok = build_word_tokenizer(TEXTS, 48)
    torch.manual_seed(0)
    cfg = HFBlip2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        qformer_config=dict(
            vocab_size=len(tok) + 1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            cross_attention_frequency=2,
            use_qformer_text_input=True,
            max_position_embeddings=48,
            pad_token_id=tok.pad_token_id,
        ),
        num_query_tokens=8,
        image_text_hidden_size=16,
        image_token_index=image_token_index,
    )
    hf = Blip2ForImageTextRetrieval(cfg).eval()
    with torch.no_grad():  # transformers zero-initialises the queries: make them distinct
        hf.query_tokens.normal_(0, 0.5)
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return hf, tok


@pytest.mark.parametrize("image_token_index", [None, "extra"])
def test_full_size_path_matches_transformers(tmp_path, image_token_index):
    """Loaded through the code path of ``Salesforce/blip2-itm-vit-g``: ITC and ITM outputs equal
    transformers' own ``Blip2ForImageTextRetrieval`` on the same inputs."""
    tok_len = len(build_word_tokenizer(TEXTS, 48))
    iti = None if image_token_index is None else tok_len  # an id past the word vocabulary
    hf, tok = _hub_style_checkpoint(tmp_path, iti)
    m = Blip2Retrieval.create(Blip2Config(pretrained=str(tmp_path)), OptimConfig()).eval()
    assert m.config.k == 128 and m.config.text_length == 35
    assert (m.image_transform().resize, m.image_transform().crop) == (32, 32)
    torch.manual_seed(1)
    px = torch.randn(2, 3, 32, 32)
    b = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = b["input_ids"], b["attention_mask"]
    if iti is not None:  # the Blip2Processor prepends num_query_tokens image tokens; the model strips them
        ids = torch.cat([torch.full((3, 8), iti), ids], 1)
        mask = torch.cat([torch.ones(3, 8, dtype=mask.dtype), mask], 1)
    with torch.no_grad():
        img, txt = m.encode_images(px), m.encode_texts(TEXTS)
        ref_itc = hf(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image  # [2 images, 3 texts]
        assert torch.allclose(m.score_variants()["itc"](img, txt), ref_itc, atol=1e-5)
        pairs = px[[0, 1, 0]]  # image i paired with text i
        ref_itm = hf(pixel_values=pairs, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        ours = m.head.itm_logits(m.vision_tokens(pairs), txt.extra["input_ids"], txt.extra["attention_mask"])
        assert torch.allclose(ours, ref_itm.logits_per_image, atol=1e-5)
        assert torch.allclose(
            m.itm_scores(m.vision_tokens(pairs), txt.extra["input_ids"], txt.extra["attention_mask"]),
            ref_itm.logits_per_image[:, 1],
            atol=1e-5,
        )


def test_full_size_path_uses_every_weight_and_misses_none(tmp_path):
    _hub_style_checkpoint(tmp_path, None)
    m = Blip2Retrieval.create(Blip2Config(pretrained=str(tmp_path)), OptimConfig())
    checkpoint = set(load_file(tmp_path / "model.safetensors"))
    module = set(m.state_dict())
    expected = {
        f"vision_tower.model.{k[len('vision_model.') :]}" if k.startswith("vision_model.") else f"head.{k}"
        for k in checkpoint
    }
    extras = {f"head.{k}" for k in EXTRA_PARAMETERS}  # the only parameters the checkpoint does not hold
    assert module - expected == extras, "parameters not loaded from the checkpoint"
    assert expected - module == set(), "checkpoint weights left unused"
    # a weight the model does not know is refused, and so is a missing one
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        weights | {"qformer.stray.weight": torch.zeros(2)}, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    with pytest.raises(LoadingError, match="unused"):
        Blip2Retrieval.create(Blip2Config(pretrained=str(tmp_path)), OptimConfig())
    weights.pop("itm_head.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="missing"):
        Blip2Retrieval.create(Blip2Config(pretrained=str(tmp_path)), OptimConfig())


def test_suite_checkpoint_round_trip(clip_dir, tmp_path):
    src = _tiny(clip_dir).eval()
    with torch.no_grad():
        src.head.temp.fill_(0.05)
    src.save_checkpoint(tmp_path / "ckpt")
    again = Blip2Retrieval.load_checkpoint(tmp_path / "ckpt").eval()
    assert again.config == src.config and float(again.head.temp.detach()) == pytest.approx(0.05)
    assert again.vision_tower.fingerprint() == src.vision_tower.fingerprint()
    assert again.image_transform() == src.image_transform()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a_img, b_img = src.encode_images(px), again.encode_images(px)
        a_txt, b_txt = src.encode_texts(TEXTS), again.encode_texts(TEXTS)
        assert torch.equal(a_img.emb, b_img.emb) and torch.equal(a_txt.emb, b_txt.emb)
        assert torch.equal(src.score(a_txt, a_img), again.score(b_txt, b_img))
    # the frozen tower is referenced (source and fingerprint), not copied into the checkpoint
    assert not (tmp_path / "ckpt" / "vision_tower").exists()
    reference = json.loads((tmp_path / "ckpt" / "vision_tower.json").read_text())
    assert reference == {"kind": "clip", "source": str(clip_dir), "fingerprint": src.vision_tower.fingerprint()}


def test_a_changed_or_missing_frozen_base_is_refused_on_load(clip_dir, tmp_path):
    _tiny(clip_dir).save_checkpoint(tmp_path / "ckpt")
    weights = load_file(clip_dir / "model.safetensors")
    name = next(k for k in weights if "post_layernorm.bias" in k)
    save_file(weights | {name: weights[name] + 0.1}, clip_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="not the one this checkpoint was trained on"):
        Blip2Retrieval.load_checkpoint(tmp_path / "ckpt")
    shutil.rmtree(clip_dir)
    with pytest.raises(LoadingError, match="cannot be loaded"):
        Blip2Retrieval.load_checkpoint(tmp_path / "ckpt")


def test_full_size_checkpoint_holds_what_was_trained(tmp_path):
    """A checkpoint of a full-size model stores the Q-Former head and a reference to the pretrained
    folder, not the frozen ViT (3.9 GB at ViT-g), and it loads back to the same model."""
    _hub_style_checkpoint(tmp_path / "hub", None)
    m = Blip2Retrieval.create(Blip2Config(pretrained=str(tmp_path / "hub")), OptimConfig()).eval()
    m.save_checkpoint(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "vision_tower.json").read_text())["source"] == str(tmp_path / "hub")
    saved = {k for f in (tmp_path / "ckpt").rglob("*.safetensors") for k in load_file(f)}
    assert saved and not any("patch_embedding" in k or "encoder.layers." in k for k in saved)
    again = Blip2Retrieval.load_checkpoint(tmp_path / "ckpt").eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.encode_images(px).emb, m.encode_images(px).emb)


# -- re-ranking --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 3, 7, 10])
def test_rerank_changes_only_the_top_k_and_keeps_the_rest_in_order(k):
    torch.manual_seed(0)
    itc = torch.rand(5, 7)
    calls = []

    def pair(qi, gi):
        calls.append(len(qi))
        return torch.randn(len(qi)) * 5

    out = rerank_topk(itc, k, pair, batch_size=4)
    kk = min(k, 7)
    assert sum(calls) == 5 * kk and all(c <= 4 for c in calls)
    top = itc.topk(kk, dim=1).indices if kk else torch.zeros(5, 0, dtype=torch.long)
    for r in range(5):
        order = out[r].argsort(descending=True)
        assert set(order[:kk].tolist()) == set(top[r].tolist())  # the re-scored items are the new top k
        rest = order[kk:]
        # the others keep their first-stage order, and every one of them is below every re-scored item
        assert torch.all(itc[r, rest][:-1] >= itc[r, rest][1:])
        if kk and len(rest):
            assert out[r, top[r]].min() > out[r, rest].max()
    if kk == 0:
        assert torch.equal(out, itc)


def test_itm_head_runs_in_float32_under_autocast(clip_dir):
    """At full size the evaluation runs bf16-mixed: the ITM logits re-ranking adds to the ITC must
    not be rounded to bf16's 0.03-0.06 steps. The head and the average run in float32."""
    m = _tiny(clip_dir).eval()
    h = torch.randn(3, 5, m.head.itm_head.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = m.head.itm_head(h).mean(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m.head.itm_average(h)
            masked = m.head.itm_average(h, torch.tensor([[1, 1, 0, 0, 0]] * 3))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.allclose(masked, m.head.itm_head(h[:, :2]).mean(1), atol=1e-6)


def test_a_tie_across_the_kth_place_is_not_rescored():
    """topk picks tied items in no defined order: re-scoring the picked ones would turn a tie into a
    win for whichever it picked. The group tied with the best of the rest stays tied, below."""
    itc = torch.tensor([[0.9, 0.8, 0.8, 0.8, 0.1], [0.9, 0.8, 0.7, 0.6, 0.1]])
    out = rerank_topk(itc, 2, lambda qi, gi: torch.full((len(qi),), 5.0))
    assert out[0, 0] == pytest.approx(5.9) and out[0, 1] == out[0, 2] == out[0, 3] > out[0, 4]
    assert out[1, :2].tolist() == pytest.approx([5.9, 5.8]) and out[1, 2] > out[1, 3] > out[1, 4]  # no tie
    same = torch.zeros(10, 10)  # every item tied: nothing re-scored, every rank the worst
    assert torch.equal(rerank_topk(same, 4, lambda qi, gi: torch.randn(len(qi))), same)


def test_rerank_adds_the_pair_score_to_the_first_stage():
    itc = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    out = rerank_topk(itc, 2, lambda qi, gi: torch.where(gi == 0, -1.0, 2.0))
    assert out[0, 0] == pytest.approx(0.9 - 1.0) and out[0, 2] == pytest.approx(0.5 + 2.0)
    assert out[0].argsort(descending=True).tolist() == [2, 0, 3, 1]


def test_rerank_batches_pairs_in_cost_order_and_puts_scores_back():
    torch.manual_seed(0)
    itc = torch.rand(6, 9)
    cost_of_query = torch.tensor([5, 1, 4, 1, 3, 2])
    score = torch.randn(6, 9)
    seen = []

    def pair(qi, gi):
        seen.append(cost_of_query[qi])
        return score[qi, gi]

    plain = rerank_topk(itc, 3, lambda qi, gi: score[qi, gi], batch_size=4)
    ordered = rerank_topk(itc, 3, pair, batch_size=4, pair_cost=lambda qi, gi: cost_of_query[qi])
    assert torch.equal(plain, ordered)  # the order of the batches never changes a score
    flat = torch.cat(seen)
    assert torch.equal(flat, flat.sort().values) and len(flat) == 18  # cheap pairs first
    # a batch holds no pair costing more than (1 + max_padding) x its first, and at most batch_size pairs
    sizes = [len(c) for c in seen]
    assert all(int(c.max()) <= 1.25 * int(c[0]) for c in seen) and max(sizes) <= 4
    assert [int(c[0]) for c in seen] == [1, 1, 2, 3, 4, 5] and sizes == [4, 2, 3, 3, 4, 2]  # 5 <= 1.25 x 4
    seen.clear()
    loose = rerank_topk(itc, 3, pair, batch_size=4, pair_cost=lambda qi, gi: cost_of_query[qi], max_padding=10.0)
    assert torch.equal(plain, loose) and [len(c) for c in seen] == [4, 4, 4, 4, 2]  # batch_size alone


def test_rerank_scores_each_distinct_pair_once():
    """Rows 0 and 2 are the same query (same pair key): their pairs are scored once, shared,
    and the result equals scoring every pair."""
    torch.manual_seed(0)
    itc = torch.rand(4, 6)
    itc[2] = itc[0]
    score = torch.randn(4, 6)
    score[2] = score[0]
    same = torch.tensor([0, 1, 0, 3])  # query identity
    scored = []

    def pair(qi, gi):
        scored.extend(zip(same[qi].tolist(), gi.tolist()))
        return score[qi, gi]

    plain = rerank_topk(itc, 3, lambda qi, gi: score[qi, gi], batch_size=4)
    shared = rerank_topk(
        itc, 3, pair, batch_size=4, pair_cost=lambda qi, gi: same[qi], pair_key=lambda qi, gi: same[qi] * 6 + gi
    )
    assert torch.equal(plain, shared)
    assert len(scored) == 9 and len(set(scored)) == 9  # 3 distinct queries x k, nothing twice


def test_text_identity_tells_apart_ids_masks_and_lengths():
    ids = torch.tensor([[5, 6, 0], [5, 6, 0], [5, 6, 0], [5, 7, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    same = Blip2Retrieval.text_identity(ids, mask, None).tolist()
    assert same[0] == same[1] and len({same[0], same[2], same[3]}) == 3
    by_l = Blip2Retrieval.text_identity(ids, mask, torch.tensor([4, 9, 4, 4])).tolist()
    assert by_l[0] != by_l[1]


def test_blip2_rerank_cost_is_text_tokens_plus_own_queries():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    idx = torch.tensor([2, 0, 1, 1])
    assert Blip2Retrieval.itm_pair_cost(mask, None, idx).tolist() == [1, 2, 4, 4]
    assert Blip2Retrieval.itm_pair_cost(mask, torch.tensor([10, 20, 30]), idx).tolist() == [31, 12, 24, 24]


# -- losses ------------------------------------------------------------------------------
def test_hard_negatives_never_pick_a_positive():
    torch.manual_seed(0)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    positives = groups[:, None] == groups[None, :]
    for _ in range(200):
        sim = torch.randn(8, 8) * 10
        sim[positives] += 50  # positives are by far the most similar: they must still never be drawn
        cols, valid = sample_hard_negatives(sim, positives)
        assert valid.all() and not positives[torch.arange(8), cols].any()
        img, txt, labels = itm_pairs(sim, positives, max_anchors=5)
        assert torch.equal(positives[img, txt], labels == 1) and int(labels.sum()) == 5 and len(labels) == 15
    everything = torch.ones(3, 3, dtype=torch.bool)
    _, valid = sample_hard_negatives(torch.randn(3, 3), everything)
    assert not valid.any()
    img, txt, labels = itm_pairs(torch.randn(3, 3), everything)
    assert labels.tolist() == [1, 1, 1]


def test_hard_fraction_mixes_uniform_negatives_in():
    g = torch.Generator().manual_seed(0)
    positives = torch.eye(6, dtype=torch.bool).repeat(400, 1)  # 2400 rows over 6 columns
    sim = torch.zeros(2400, 6)
    sim[:, 5] = 30.0  # column 5: by far the hardest negative (except for row 5's own positive)
    sim[5::6, 4] = 30.0
    hard = torch.where(torch.arange(2400) % 6 == 5, 4, 5)
    for h, expected in ((1.0, 1.0), (0.5, 0.5 + 0.5 / 5), (0.0, 1 / 5)):
        cols, valid = sample_hard_negatives(sim, positives, g, hard_fraction=h)
        assert valid.all() and not positives[torch.arange(2400), cols].any()
        share = (cols == hard).float().mean().item()
        assert abs(share - expected) < 0.04, (h, share)
    with pytest.raises(ValueError, match="hard_fraction"):
        sample_hard_negatives(sim, positives, g, hard_fraction=1.5)


def test_training_negatives_are_drawn_from_the_itc_logits_as_lavis_does(clip_dir):
    """softmax(similarity / temperature), not softmax(similarity): at temperature 0.05 a text
    0.3 more similar than the others is drawn almost always (e^6 = 403 times as likely as each
    of the others), where the raw cosines would make it only e^0.3 = 1.35 times as likely."""
    model = _tiny(clip_dir)
    with torch.no_grad():
        model.head.temp.fill_(0.05)
    torch.manual_seed(0)
    n = 400
    sim = torch.zeros(n, n)
    sim[:, 0] = 0.3  # item 0 is everyone's hardest negative
    sim[0, 1] = 0.3  # ... and item 1 item 0's
    positives = torch.eye(n, dtype=torch.bool)
    hits = draws = 0
    for _ in range(20):
        _, txt, labels = model.itm_training_pairs(ItcBlocks(sim, sim.T, positives, positives))
        anchors = int(labels.sum())  # the first anchors' own pairs, then each anchor image's negative text
        drawn = txt[anchors : 2 * anchors]
        hardest = torch.where(torch.arange(anchors) == 0, 1, 0)
        hits, draws = hits + int((drawn == hardest).sum()), draws + anchors
    assert hits / draws > 0.4, hits / draws  # e^6 / (e^6 + 398) = 0.50; softmax of the raw cosines: 0.003


def test_itc_is_multi_positive_and_uses_the_temperature():
    feats = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    text = feats[:, 0]
    sim = itc_similarities(feats, text)
    assert torch.allclose(sim.diagonal(), torch.ones(4), atol=1e-6)
    mask = torch.tensor([[1, 0, 0]] * 4)
    assert torch.allclose(itc_similarities(feats, text, mask), feats[:, 0] @ text.T, atol=1e-6)
    eye = torch.eye(4, dtype=torch.bool)
    assert itc_loss(sim, torch.tensor(0.01), eye) < itc_loss(sim, torch.tensor(0.5), eye)


def test_a_few_steps_reduce_the_losses(clip_dir):
    m = _tiny(clip_dir, dropout=0.0, itc_label_smoothing=0.0)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(1)
    batch = TrainBatch(torch.arange(3), torch.randn(3, 3, 32, 32), TEXTS)
    first = m._losses(batch)
    for _ in range(30):
        losses = m._losses(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["itc"].item() < 0.5 * first["itc"].item() and losses["itm"].item() < first["itm"].item()
    assert all(p.grad is None for p in m.vision_tower.parameters())  # the tower stays frozen


# -- feature cache -------------------------------------------------------------------------
def test_feature_cache_hit_miss_and_invalidation(clip_dir, tmp_path):
    tower = ClipVisionTower.from_clip_checkpoint(clip_dir)
    images = torch.randn(5, 3, 32, 32)
    calls = []

    def pixels(i):
        calls.append(i)
        return images[i]

    cache = FeatureCache(tower, tmp_path / "features", batch_size=2)
    get = cache.for_split("test", 5, "sha-a", pixels)
    assert len(calls) == 5 and cache.provenance["test"]["hit"] is False and "features_test_extract_s" in cache.timings
    with torch.no_grad():
        assert torch.allclose(get(3), tower(images[3:4])[0], atol=1e-6)
    # written atomically: no partial file left (the lock file that serialises extractions stays)
    assert [p.suffix for p in (tmp_path / "features").glob(".*")] == [".lock"]
    # a new cache object (another run) reads the file: no image is touched
    calls.clear()
    again = FeatureCache(ClipVisionTower.from_clip_checkpoint(clip_dir), tmp_path / "features")
    assert torch.equal(again.for_split("test", 5, "sha-a", pixels)(3), get(3)) and calls == []
    assert again.provenance["test"]["hit"] is True
    # other annotations, another split or other weights: a miss
    again.for_split("test", 5, "sha-b", pixels)
    assert len(calls) == 5
    changed = ClipVisionTower.from_clip_checkpoint(clip_dir)
    with torch.no_grad():
        changed.model.post_layernorm.bias.add_(0.1)
    assert changed.fingerprint() != tower.fingerprint()
    assert FeatureCache(changed, tmp_path / "features").path("test", 5, "sha-a") != cache.path("test", 5, "sha-a")
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2  # no partial file left behind


def test_lightning_extraction_leaves_the_random_generators_as_it_found_them(clip_dir, tmp_path):
    """A training is the same whether its features were extracted in the same run or cached: the
    extraction's Lightning predict loop does not advance Python's, NumPy's or torch's generator."""
    tower = ClipVisionTower.from_clip_checkpoint(clip_dir)
    images = torch.randn(5, 3, 32, 32)
    cache = FeatureCache(tower, tmp_path / "features", batch_size=2, extractor=LightningExtractor(accelerator="cpu"))

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    get = cache.for_split("test", 5, "sha-rng", lambda i: images[i])
    assert cache.provenance["test"]["hit"] is False  # extracted by the Lightning loop just now
    assert draws() == expected
    with torch.no_grad():
        assert torch.allclose(get(3), tower(images[3:4])[0], atol=1e-6)


# -- bench run end to end ------------------------------------------------------------------
runner = CliRunner()
SMALL = '{"n_train": 64, "n_val": 16, "n_test": 24}'
CLIP_DEP = {
    "vision_checkpoint": {
        "train": {"max_epochs": 1},
        "model_args": {"vision_layers": 1, "text_layers": 1, "vision_width": 32, "text_width": 32, "embed_dim": 16},
    }
}
BLIP2_ARGS = TINY_QFORMER | {"itm_max_anchors": 8, "dependency_overrides": CLIP_DEP}


def _run(tmp_path, *extra: str, model_args: dict | None = None):
    args = [
        "run",
        "--model",
        "blip2",
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
        f"model_args={json.dumps(model_args or BLIP2_ARGS)}",
        "--set",
        "eval.measure=false",
        *extra,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_bench_run_blip2_end_to_end(tmp_path):
    first = _run(tmp_path)
    assert "training clip (dependency vision_checkpoint of blip2; seed 0): no cached checkpoint" in first.output
    r = json.loads((tmp_path / "results" / "blip2__synthetic__default.json").read_text())
    m = r["metrics"]
    for prefix in ("", "itc/"):
        for d in ("t2i", "i2t"):
            for k in ("R@1", "R@5", "R@10", "MRR"):
                assert 0.0 <= m[f"{prefix}{d}/{k}"] <= 1.0
    assert m["t2i/n_queries"] == 24 * 5 and "itc/i2i/R@5" in m and len(r["per_query"]["itc/t2i/rank"]) == 120
    # Sim is the first-stage ITC similarity (a cosine), not the re-rank score
    assert m["t2i/Sim"] == m["itc/t2i/Sim"] and -1.0 <= m["t2i/Sim"] <= 1.0
    assert r["per_query"]["t2i/sim"] == r["per_query"]["itc/t2i/sim"]
    dep = r["provenance"]["dependencies"]["vision_checkpoint"]
    assert dep["model"] == "clip" and dep["trained_this_run"] is True
    assert (tmp_path / "cache" / "checkpoints").joinpath(dep["checkpoint"].rsplit("/", 1)[-1]).is_dir()
    assert r["model_config"]["vision_checkpoint"] == dep["checkpoint"]
    feats = r["provenance"]["features"]
    assert feats["test"]["hit"] is False  # computed during this run (train and val during training)
    assert r["timings"]["features_test_extract_s"] > 0 and r["timings"]["dependencies_s"] > 0

    # again: the CLIP dependency, the BLIP2 checkpoint and the features all come from the cache
    assert "training clip" not in _run(tmp_path, "--tag", "again").output
    again = json.loads((tmp_path / "results" / "blip2__synthetic__again.json").read_text())
    assert again["provenance"]["trained_this_run"] is False
    assert again["provenance"]["dependencies"]["vision_checkpoint"]["trained_this_run"] is False
    assert again["provenance"]["features"]["test"]["hit"] is True
    assert again["metrics"] == r["metrics"]

    # an explicit vision checkpoint (here: the one resolved above) is used as given
    assert dep["checkpoint"].startswith("<cache>/checkpoints/")  # recorded relative to the cache: no machine path
    given_path = str(resolve(dep["checkpoint"], {"cache": tmp_path / "cache"}))
    _run(tmp_path, "--tag", "given", model_args=TINY_QFORMER | {"vision_checkpoint": given_path})
    given = json.loads((tmp_path / "results" / "blip2__synthetic__given.json").read_text())
    assert given["provenance"]["dependencies"]["vision_checkpoint"]["given"] is True
    assert given["model_config"]["vision_checkpoint"] == dep["checkpoint"]


# -- evaluation plumbing: extra tensors and score variants -------------------------------
def test_metric_gathers_extra_in_index_order_and_reports_score_variants():
    import numpy as np

    from benchmark.metrics import RetrievalMetric

    try:
        from tests.test_metrics import embeddings, reference_metrics, small_eval_set
    except ImportError:  # tests/ not a package
        from test_metrics import embeddings, reference_metrics, small_eval_set

    es = small_eval_set()
    img = Encoded(embeddings(es.n_images, 1, tokens=3), extra={"id": torch.arange(es.n_images)[:, None] * 10})
    txt = Encoded(embeddings(es.n_queries, 2), extra={"id": torch.arange(es.n_queries)[:, None]})
    seen = {}

    def reranked(q: Encoded, g: Encoded) -> torch.Tensor:
        seen["q"], seen["g"] = q.extra["id"], g.extra["id"]
        return -max_sim(q, g)  # any other scoring of the same embeddings

    metric = RetrievalMetric(es, reranked, chunk_size=4, score_variants={"itc": max_sim})
    rng = np.random.default_rng(1)
    for order, update, enc in (
        (rng.permutation(es.n_images), metric.update_images, img),
        (rng.permutation(es.n_queries), metric.update_texts, txt),
    ):
        for part in np.array_split(np.concatenate([order, order[:2]]), 3):  # shuffled, with padded repeats
            idx = torch.from_numpy(part)
            update(idx, enc[idx])
    got = metric.compute()
    want = reference_metrics(es, img, txt)
    for k, v in want.items():
        assert got[f"itc/{k}"] == pytest.approx(v, nan_ok=True), k  # the variant = plain max_sim
    assert got["t2i/R@1"] != pytest.approx(want["t2i/R@1"]) or got["t2i/MRR"] != pytest.approx(want["t2i/MRR"])
    assert torch.equal(seen["g"].flatten(), torch.arange(es.n_images) * 10)  # extra sorted like the embeddings
    assert "itc/t2i/rank" in metric.per_query and "t2i/rank" in metric.per_query
    with pytest.raises(ValueError, match="variant"):
        RetrievalMetric(es, max_sim, score_variants={"t2i": max_sim})


def test_metric_keeps_extras_only_for_the_directions_that_read_them(clip_dir):
    """A model whose scoring reads ``Encoded.extra`` only in t2i / i2t (BLIP-2's ITM re-ranking)
    has its extras dropped where only i2i uses a modality: nothing stored, nothing gathered. The
    real models declare it (``ExtraDirections``); the metrics are those of keeping them."""
    from benchmark.metrics import RetrievalMetric
    from lightning_modules.contract import ExtraDirections

    try:
        from tests.test_metrics import embeddings, small_eval_set
    except ImportError:  # tests/ not a package
        from test_metrics import embeddings, small_eval_set

    es = small_eval_set()
    img = Encoded(embeddings(es.n_images, 1, tokens=3), extra={"tokens": torch.randn(es.n_images, 4, 2)})
    txt = Encoded(embeddings(es.n_queries, 2), extra={"ids": torch.arange(es.n_queries)[:, None]})
    results = {}
    for reads in (None, ("t2i", "i2t")):
        for directions in (("i2i",), ("t2i", "i2i")):
            metric = RetrievalMetric(es, max_sim, directions=directions, chunk_size=4, extra_directions=reads)
            metric.update_images(torch.arange(es.n_images), img)
            metric.update_texts(torch.arange(es.n_queries), txt)
            stored = sorted(n for n in metric._defaults if "_extra_" in n)
            if "t2i" in directions:
                assert stored == ["image_extra_tokens", "text_extra_ids"], (reads, directions)
            elif reads is None:
                assert stored == ["image_extra_tokens"]  # a model that may read them in i2i keeps them
            else:
                assert stored == [], directions  # i2i alone: the image tokens are never read
            results[reads, directions] = metric.compute()
    kept, dropped = results[None, ("i2i",)], results[("t2i", "i2t"), ("i2i",)]
    assert {k: v for k, v in kept.items() if not k.startswith("index/")} == {
        k: v for k, v in dropped.items() if not k.startswith("index/")
    }
    assert dropped["index/bytes"] < kept["index/bytes"]  # the index no longer holds the unread tokens
    # the evaluation hands the model's declaration to the metric: i2i of a BLIP-2 keeps no image tokens
    from benchmark.config import EvalConfig
    from benchmark.evaluation import RetrievalEvaluator

    model = _tiny(clip_dir)
    assert isinstance(model, ExtraDirections) and model.extra_directions == ("t2i", "i2t")
    evaluator = RetrievalEvaluator(model, es, EvalConfig(), directions=("i2i",))
    assert evaluator.metric.extra_modalities == set()
    assert RetrievalEvaluator(model, es, EvalConfig()).metric.extra_modalities == {"image", "text"}


def test_variant_directions_reuse_the_main_results_elsewhere():
    from benchmark.metrics import RetrievalMetric

    try:
        from tests.test_metrics import embeddings, small_eval_set
    except ImportError:  # tests/ not a package
        from test_metrics import embeddings, small_eval_set

    es = small_eval_set()
    img, txt = Encoded(embeddings(es.n_images, 1, tokens=3)), Encoded(embeddings(es.n_queries, 2))
    shapes = []

    def variant(q: Encoded, g: Encoded) -> torch.Tensor:
        shapes.append((q.emb.ndim, g.emb.ndim))
        return -max_sim(q, g)

    def compute(**kwargs) -> tuple[dict, dict]:
        metric = RetrievalMetric(es, max_sim, chunk_size=4, score_variants={"v": variant}, **kwargs)
        metric.update_images(torch.arange(es.n_images), img)
        metric.update_texts(torch.arange(es.n_queries), txt)
        return metric.compute(), metric.per_query

    full, _ = compute()
    assert (3, 3) in shapes  # without variant_directions the variant scores image -> image too
    shapes.clear()
    got, per_query = compute(variant_directions={"v": ("t2i", "i2t")})
    assert (3, 3) not in shapes and shapes  # ... with them, only text <-> image
    for k, v in got.items():
        if k.startswith("v/i2i/"):
            assert v == pytest.approx(got[k[2:]], nan_ok=True), k  # i2i: the main score's results
        elif k.startswith("v/"):
            assert v == pytest.approx(full[k], nan_ok=True), k  # the others: the variant's own
    assert torch.equal(torch.as_tensor(per_query["v/i2i/rank"]), torch.as_tensor(per_query["i2i/rank"]))
    with pytest.raises(ValueError, match="variant_directions"):
        RetrievalMetric(es, max_sim, score_variants={"v": variant}, variant_directions={"w": ("t2i",)})
    with pytest.raises(ValueError, match="variant_directions"):
        RetrievalMetric(es, max_sim, score_variants={"v": variant}, variant_directions={"v": ("x2y",)})


def test_interrupted_feature_extraction_resumes_from_the_last_complete_batch(clip_dir, tmp_path):
    tower = ClipVisionTower.from_clip_checkpoint(clip_dir)
    images = torch.randn(7, 3, 32, 32)
    seen: list[int] = []

    def pixels(i):
        seen.append(i)
        return images[i]

    class Crash(RuntimeError):
        pass

    def crashing(batch):  # the tower dies on its third batch
        if len(seen) > 4:
            raise Crash
        return tower(batch)

    crashing.parameters = tower.parameters  # type: ignore[attr-defined]
    broken = FeatureCache(tower, tmp_path / "features", batch_size=2)
    broken.tower = crashing  # type: ignore[assignment]
    broken.tower.fingerprint = tower.fingerprint  # type: ignore[attr-defined]
    with pytest.raises(Crash):
        broken.for_split("test", 7, "sha", pixels)
    assert not broken.path("test", 7, "sha").exists()  # nothing half-written in place
    seen.clear()
    cache = FeatureCache(tower, tmp_path / "features", batch_size=2)
    feats = cache.for_split("test", 7, "sha", pixels)
    assert seen == [4, 5, 6]  # batches 0 and 1 were complete: only batches 2 and 3 are computed
    assert cache.provenance["test"]["resumed_batches"] == 2
    fresh = FeatureCache(tower, tmp_path / "other", batch_size=2).for_split("test", 7, "sha", lambda i: images[i])
    assert all(torch.equal(feats(i), fresh(i)) for i in range(7))
    name = cache.path("test", 7, "sha").name  # the partial array and the batch logs are gone
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [f".{name}.lock", name]


@pytest.mark.parametrize("lightning", [False, True])
def test_extraction_refuses_a_disk_too_small_before_writing(clip_dir, tmp_path, monkeypatch, lightning):
    """The preallocated array is sparse: without the check a full disk would surface midway. Both
    extractors refuse up front (the Lightning one on every rank), name the folder and the sizes, and
    leave no file behind; with the space there the same call extracts."""
    tower = ClipVisionTower.from_clip_checkpoint(clip_dir)
    images = torch.randn(5, 3, 32, 32)
    extractor = {"extractor": LightningExtractor(accelerator="cpu")} if lightning else {}
    cache = FeatureCache(tower, tmp_path / "features", batch_size=2, **extractor)
    with torch.no_grad():
        row_bytes = tower(images[:1]).numel() * 4  # float32 at tiny size
    free = 5 * row_bytes + feature_cache.SPACE_MARGIN_BYTES - 1  # one byte short
    real = feature_cache.shutil.disk_usage
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    with pytest.raises(CacheSpaceError, match=r"features/: 5 images x .* GiB more disk.*INSTRUCTSEE_CACHE"):
        cache.for_split("test", 5, "sha", lambda i: images[i])
    assert not [p for p in (tmp_path / "features").iterdir() if p.suffix != ".lock"]
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda p: real(p)._replace(free=free + 1))
    assert torch.equal(
        cache.for_split("test", 5, "sha", lambda i: images[i])(0), cache.read(cache.path("test", 5, "sha"))[0]
    )
