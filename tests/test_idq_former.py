"""BLIP2-IDQ-Former (``--model ours``) on a tiny BLIP2 checkpoint: protocol, exactness, round trip, training."""

from __future__ import annotations

import shutil

import pytest
import torch

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, RetrievalModel
from lightning_modules.blip2 import Blip2Retrieval
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.idq_former import QSCALER_ENCODER_DIR, IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig
from tests.tiny_blip2 import save_tiny_blip2, save_tiny_clip

TEXTS = [
    "find images of a red circle",
    "find images of a small blue square left of a big green star",
    "show me a shape",
    "two yellow triangles above a purple circle on a striped background",
]
NQ, LMAX = 8, 12


@pytest.fixture(scope="module")
def blip2_checkpoint(tmp_path_factory):
    return save_blip2_checkpoint(tmp_path_factory.mktemp("blip2"))


def save_blip2_checkpoint(root):
    """The tiny BLIP2 checkpoint under ``root``; its config names a tiny CLIP (``clip/`` beside it)
    as its tower's origin, whose text tower the default QScaler reads."""
    clip = save_tiny_clip(root / "clip", TEXTS)
    return save_tiny_blip2(root / "blip2", TEXTS, NQ, vision_checkpoint=str(clip))


def _ours(ckpt, **kw) -> IdqFormerRetrieval:
    """Ours at tiny size on ``ckpt`` (the QScaler reads the text tower of its CLIP: the tiny default)."""
    torch.manual_seed(0)
    cfg = IdqConfig(blip2_checkpoint=str(ckpt), l_base=2, l_max=LMAX, l_init=NQ, k_test=3, cache_features=False, **kw)
    return IdqFormerRetrieval.create(cfg, OptimConfig())


def _pixels(n: int = 3) -> torch.Tensor:
    """Frozen vision tokens ``[n, 5, 32]`` (the BLIP2 family takes tokens wherever it takes pixels)."""
    return torch.randn(n, 5, 32, generator=torch.Generator().manual_seed(1))


def test_builds_on_the_blip2_checkpoint_and_honours_the_protocol(blip2_checkpoint):
    m = _ours(blip2_checkpoint).eval()
    base = Blip2Retrieval.load_checkpoint(blip2_checkpoint)
    assert isinstance(m, RetrievalModel)
    assert torch.equal(m.bank.tokens[:, :NQ], base.head.query_tokens)
    with torch.no_grad():
        img, txt = m.encode_images(_pixels()), m.encode_texts(TEXTS)
        assert (txt.lengths == NQ).all()  # the QScaler starts at l_init
        m.text_lengths = lambda texts: torch.tensor([2, 5, 12, 7])[: len(texts)]  # lengths that differ
        txt = m.encode_texts(TEXTS)
        t2i, i2t, i2i = m.score(txt, img), m.score(img, txt), m.score(img, img)
        itc = m.itc_score(txt, img)
    assert img.emb.shape == (3, LMAX, 16) and txt.emb.shape == (4, 16)
    assert txt.lengths.tolist() == [2, 5, 12, 7]
    assert t2i.shape == (4, 3) and i2t.shape == (3, 4) and i2i.shape == (3, 3)
    ref = torch.stack(
        [torch.stack([(img.emb[g, : txt.lengths[q]] @ txt.emb[q]).max() for g in range(3)]) for q in range(4)]
    )
    torch.testing.assert_close(itc, ref)
    torch.testing.assert_close(m.itc_score(img, txt), ref.T)
    assert set(m.score_variants()) == {"itc"}


def test_itm_at_per_text_lengths_equals_separate_l_query_passes(blip2_checkpoint):
    m = _ours(blip2_checkpoint).eval()
    with torch.no_grad():
        tokens = m.vision_tokens(_pixels(4))
        ids, mask = m.tokenize(TEXTS)
        lengths = torch.tensor([2, 5, 12, 7])
        batched = m.itm_logits(tokens, ids, mask, lengths)
        for b, n in enumerate(lengths.tolist()):
            one = m.itm_logits(tokens[b : b + 1], ids[b : b + 1], mask[b : b + 1], torch.tensor([n]))
            torch.testing.assert_close(batched[b : b + 1], one, atol=1e-5, rtol=0)
        # and the gallery path: the first L outputs of the L_max pass are an L-query pass
        full = m.query_outputs(tokens)
        from lightning_modules.components.query_attention import qformer_query_forward

        five = qformer_query_forward(m.head.qformer, m.bank(5), tokens, mode="nested")
    torch.testing.assert_close(full[:, :5], five, atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoder", ["qformer", "clip"])
def test_checkpoint_round_trip_keeps_scores_and_lengths(blip2_checkpoint, tmp_path, encoder):
    kw = {"qscaler_encoder": encoder}
    if encoder == "clip":  # a CLIP folder that is gone by the time the checkpoint is loaded
        kw["clip_checkpoint"] = str(shutil.copytree(blip2_checkpoint.parent / "clip", tmp_path / "clip"))
    m = _ours(blip2_checkpoint, **kw).eval()
    with torch.no_grad():
        m.qscaler.head.net[-1].weight.normal_(0, 0.3)
        m.bank.tokens.add_(0.1)
        m.head.qformer.layernorm.weight.add_(1.0)  # "fine-tuned" Q-Former
    m.save_checkpoint(tmp_path / "ours")
    if encoder == "clip":
        shutil.rmtree(tmp_path / "clip")
    back = IdqFormerRetrieval.load_checkpoint(tmp_path / "ours").eval()
    with torch.no_grad():
        a_img, a_txt = m.encode_images(_pixels()), m.encode_texts(TEXTS)
        b_img, b_txt = back.encode_images(_pixels()), back.encode_texts(TEXTS)
        torch.testing.assert_close(back.score(b_txt, b_img), m.score(a_txt, a_img))
        torch.testing.assert_close(back.qscaler(TEXTS).r, m.qscaler(TEXTS).r)
    assert torch.equal(a_txt.lengths, b_txt.lengths)
    if encoder == "clip":  # the CLIP text tower travelled with the checkpoint
        assert (tmp_path / "ours" / QSCALER_ENCODER_DIR / "config.json").is_file()
        assert type(back.qscaler.encoder).__name__ == "HFTextEncoder"
        return
    # the QScaler's frozen encoder is the *pretrained* text path, not the fine-tuned head's
    frozen = back.qscaler.encoder.qformer.layernorm.weight
    assert torch.equal(frozen, m.qscaler.encoder.qformer.layernorm.weight)
    assert not torch.equal(frozen, back.head.qformer.layernorm.weight)


@pytest.mark.parametrize("qscaler", [True, False])
def test_a_few_steps_train_the_qformer_bank_and_qscaler(blip2_checkpoint, qscaler):
    m = _ours(blip2_checkpoint, qscaler=qscaler).train()
    params = [
        p
        for p in [*m.head.parameters(), *m.bank.parameters(), *(m.qscaler.head.parameters() if qscaler else [])]
        if p.requires_grad
    ]
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch = TrainBatch(torch.tensor([0, 1, 2, 3]), _pixels(4), TEXTS)
    first = None
    for _ in range(4):
        losses = m._losses(batch)
        opt.zero_grad()
        losses["loss"].backward()
        if first is None:
            first = losses["loss"].item()
            assert m.bank.tokens.grad is not None and m.bank.tokens.grad.abs().sum() > 0
            if qscaler:
                assert {"itc", "itm", "length", "oracle"} <= set(losses)
                assert m.qscaler.head.net[1].weight.grad.abs().sum() > 0
                assert all(p.grad is None for p in m.qscaler.encoder.parameters())
            else:
                assert m.qscaler is None and m.gallery_length == NQ
        opt.step()
    assert losses["loss"].item() < first


def test_usage_bank_order_sorts_the_checkpoint_queries_by_their_blip2_itc_wins_at_the_first_step(
    blip2_checkpoint, tmp_path
):
    batch = TrainBatch(torch.tensor([0, 1, 2, 3]), _pixels(4), TEXTS)
    plain = _ours(blip2_checkpoint).train()
    m = _ours(blip2_checkpoint, bank_order="usage").train()
    assert torch.equal(m.bank.tokens, plain.bank.tokens)  # nothing moves before training
    base = Blip2Retrieval.load_checkpoint(blip2_checkpoint).eval()  # BLIP-2 itself, by its public seams
    with torch.no_grad():
        img = base.encode_images(_pixels(4)).emb  # [4, NQ, E]
        txt = base.encode_texts(TEXTS).emb
    wins = torch.bincount(torch.einsum("td,bkd->tbk", txt, img).argmax(-1).flatten(), minlength=NQ)
    m._losses(batch)
    order = m.bank_usage["order"]
    assert m.bank_usage["wins"] == wins.tolist() and m.bank_usage["pairs"] == 16
    assert sorted(order) == list(range(NQ)) and wins[order].tolist() == sorted(wins.tolist(), reverse=True)
    assert torch.equal(m.bank.tokens[:, :NQ], plain.bank.tokens[:, order])
    after = m.bank.tokens.detach().clone()
    m._losses(batch)  # the order is set once
    assert torch.equal(m.bank.tokens, after)
    m.save_checkpoint(tmp_path / "ours")
    back = IdqFormerRetrieval.load_checkpoint(tmp_path / "ours").train()
    back._losses(batch)  # a loaded (trained) bank is never reordered
    assert torch.equal(back.bank.tokens, after) and back.bank_usage["order"] == order


def test_oracle_queue_holds_detached_earlier_images_and_never_a_positive(blip2_checkpoint):
    m = _ours(blip2_checkpoint, oracle_queue=6).train()
    feats = torch.randn(4, m.gallery_length, 8, requires_grad=True)
    assert m._oracle_negatives(torch.tensor([0, 1, 2, 3]), feats) is None  # empty queue
    neg_index, neg = m._oracle_negatives(torch.tensor([3, 4, 5, 6]), feats + 1)
    torch.testing.assert_close(neg, feats[:3].detach())  # images 0, 1, 2 of the last batch; 3 is in this one
    assert neg_index.tolist() == [0, 1, 2]  # with their split indices, for the relevance lookup
    q_index, q_img = m._queue
    assert q_index.tolist() == [3, 4, 5, 6, 0, 1] and not q_img.requires_grad  # newest first, capped at 6
    torch.testing.assert_close(q_img, torch.cat([feats + 1, feats[:2]]).detach())
    neg_index, neg = m._oracle_negatives(torch.tensor([7, 8, 9, 10, 11, 12, 13]), feats[:1].expand(7, -1, -1) + 2)
    assert neg_index.tolist() == [3, 4, 5, 6, 0, 1]  # nothing in common with this batch: the whole queue
    torch.testing.assert_close(neg, q_img)
    assert m._queue[0].tolist() == [7, 8, 9, 10, 11, 12] and m._queue[1].shape[0] == 6  # a batch larger than the queue
    m.eval()
    assert m._oracle_negatives(torch.tensor([7]), feats[:1]) is None  # evaluation never queues


def test_qscaler_head_does_not_learn_during_warmup(blip2_checkpoint):
    from types import SimpleNamespace

    m = _ours(blip2_checkpoint, qscaler_warmup=0.5).train()
    batch = TrainBatch(torch.tensor([0, 1, 2, 3]), _pixels(4), TEXTS)
    for step, learns in ((4, False), (5, True)):  # warm-up: the first half of 10 steps
        m._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=10)
        m.zero_grad()
        m._losses(batch)["loss"].backward()
        grad = m.qscaler.head.net[1].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == learns
        assert m.bank.tokens.grad.abs().sum() > 0  # the queries learn throughout
    m._trainer = None


def test_config_validation():
    with pytest.raises(ValueError, match="attention"):
        IdqConfig(attention="causal")
    with pytest.raises(ValueError):
        IdqConfig(l_base=40, l_max=32)
    with pytest.raises(ValueError, match="blip2_checkpoint"):
        IdqFormerRetrieval.create(IdqConfig(), OptimConfig())
    for field, bad in (
        ("qscaler_lr_scale", 0.0),
        ("qscaler_warmup", 1.0),
        ("oracle_queue", -1),
        ("lmax_itc_weight", -0.5),
        ("qscaler_layers", 0),
        ("qscaler_pool", "sum"),
        ("bank_order", "random"),
    ):
        with pytest.raises(ValueError, match=field):
            IdqConfig(**{field: bad})
    for bad in ({"qscaler_encoder": "/some/clip/folder"}, {}):  # tiny's "auto" is the CLIP text tower
        with pytest.raises(ValueError, match="qscaler_layers"):
            IdqConfig(qscaler_layers=1, **bad)
    IdqConfig(qscaler_layers=1, qscaler_encoder="qformer")
    IdqConfig(qscaler_layers=1, pretrained="/some/blip2")  # full size: "auto" is the Q-Former copy
    with pytest.raises(ValueError, match="qscaler_pool"):  # a Q-Former copy has no pooler
        IdqConfig(qscaler_pool="pooler", qscaler_encoder="qformer")
    IdqConfig(qscaler_pool="pooler", qscaler_encoder="/some/clip/folder")  # valid there
    with pytest.raises(ValueError, match="qscaler_encoder='clip'"):
        IdqConfig(qscaler_encoder="clip", pretrained="/some/blip2")
    assert (IdqConfig().encoder_kind, IdqConfig(pretrained="x").encoder_kind) == ("clip", "qformer")


def test_tiny_default_encoder_is_the_text_tower_of_the_blip2_checkpoints_clip(blip2_checkpoint, tmp_path):
    m = _ours(blip2_checkpoint)
    assert type(m.qscaler.encoder).__name__ == "HFTextEncoder"
    assert m._encoder_dir == blip2_checkpoint.parent / "clip"
    other = save_tiny_clip(tmp_path / "other_clip", TEXTS[:2])  # clip_checkpoint overrides it
    assert _ours(blip2_checkpoint, clip_checkpoint=str(other))._encoder_dir == other
    bare = save_tiny_blip2(tmp_path / "bare", TEXTS, NQ)  # a BLIP2 checkpoint that names no CLIP
    with pytest.raises(ValueError, match="clip_checkpoint"):
        _ours(bare)
    with pytest.raises(ValueError, match="not a folder"):
        _ours(blip2_checkpoint, clip_checkpoint=str(tmp_path / "missing"))
    assert _ours(bare, qscaler_encoder="qformer")._encoder_dir is None


def test_qscaler_pool_reaches_the_frozen_encoder(blip2_checkpoint):
    texts = ["find a red circle", "find a small blue square left of a big green star"]
    cls = _ours(blip2_checkpoint, qscaler_encoder="qformer").eval()
    mean = _ours(blip2_checkpoint, qscaler_encoder="qformer", qscaler_pool="mean").eval()
    assert (cls.qscaler.encoder.pool, mean.qscaler.encoder.pool) == ("cls", "mean")
    assert not torch.allclose(cls.qscaler.features(texts), mean.qscaler.features(texts))


def test_text_encodings_carry_lengths_through_encoded_ops(blip2_checkpoint):
    m = _ours(blip2_checkpoint).eval()
    with torch.no_grad():
        txt = m.encode_texts(TEXTS)
    both = Encoded.cat([txt[:2], txt[2:]])
    assert torch.equal(both.lengths, txt.lengths) and set(both.extra) == {"input_ids", "attention_mask"}


def test_full_size_path_takes_a_hub_style_blip2_checkpoint(tmp_path):
    from transformers import Blip2Config as HFBlip2Config
    from transformers import Blip2ForImageTextRetrieval, BlipImageProcessor

    torch.manual_seed(0)
    tok = build_word_tokenizer(TEXTS, 48)
    qcfg = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        encoder_hidden_size=16,
        use_qformer_text_input=True,
        pad_token_id=tok.pad_token_id,
    )
    hf = Blip2ForImageTextRetrieval(
        HFBlip2Config(
            vision_config=dict(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=8,
            ),
            qformer_config=qcfg,
            num_query_tokens=32,
            image_text_hidden_size=16,
        )
    )
    with torch.no_grad():
        hf.query_tokens.normal_(0, 0.02)
    hf.save_pretrained(tmp_path / "hub")
    tok.save_pretrained(tmp_path / "hub")
    BlipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "hub")
    m = IdqFormerRetrieval.create(
        IdqConfig(pretrained=str(tmp_path / "hub"), l_max=40, k_test=2, cache_features=False), OptimConfig()
    ).eval()
    assert torch.equal(m.bank.tokens[:, :32], hf.query_tokens)
    assert torch.equal(m.bank.positions[0], hf.embeddings.position_embeddings.weight[:40])
    with torch.no_grad():
        img = m.encode_images(torch.randn(2, 3, 16, 16))
        txt = m.encode_texts(TEXTS)
        s = m.score(txt, img)
    assert img.emb.shape == (2, 40, 16) and s.shape == (4, 2) and (txt.lengths == 32).all()


def test_rerank_runs_itm_at_each_texts_own_length(blip2_checkpoint):
    """The shared BLIP2 re-rank passes each text's L to ours' ITM, in both directions."""
    from lightning_modules.components.rerank import rerank_topk

    m = _ours(blip2_checkpoint).eval()
    m.text_lengths = lambda texts: torch.tensor([2, 5, 12, 7])[: len(texts)]
    with torch.no_grad():
        img, txt = m.encode_images(_pixels()), m.encode_texts(TEXTS)
        tok, ids, mask = img.extra["image_tokens"], txt.extra["input_ids"], txt.extra["attention_mask"]
        ref = rerank_topk(
            m.itc_score(txt, img), 3, lambda q, g: m.itm_scores(tok[g], ids[q], mask[q], txt.lengths[q]), batch_size=64
        )
        at_l_init = rerank_topk(
            m.itc_score(txt, img), 3, lambda q, g: m.itm_scores(tok[g], ids[q], mask[q]), batch_size=64
        )
        torch.testing.assert_close(m.score(txt, img), ref)
        torch.testing.assert_close(
            m.score(img, txt),
            rerank_topk(
                m.itc_score(img, txt),
                3,
                lambda q, g: m.itm_scores(tok[q], ids[g], mask[g], txt.lengths[g]),
                batch_size=64,
            ),
        )
    assert not torch.allclose(ref, at_l_init)  # the lengths really matter
