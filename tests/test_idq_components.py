"""The BLIP2-IDQ-Former components: nested query attention, token bank, QScaler, dynamic length."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from lightning_modules.base import Encoded, max_sim
from lightning_modules.components.dynamic_length import (
    LengthConfig,
    length_limited_max_sim,
    length_losses,
    length_major,
    oracle_lengths,
    per_query_sims,
    soft_log_mask,
    soft_masked_logits,
)
from lightning_modules.components.qscaler import QFormerTextEncoder, QScaler
from lightning_modules.components.query_attention import qformer_query_forward, query_allowed, query_attention_mask
from lightning_modules.components.token_bank import TokenBank
from lightning_modules.components.word_tokenizer import build_word_tokenizer

H, VIS, LMAX = 32, 24, 12
TEXTS = [
    "find images of a red circle",
    "find images of a small blue square left of a big green star",
    "a shape",
    "two yellow triangles above a purple circle on a striped background",
]


def tiny_qformer_config(attn: str = "eager") -> Blip2QFormerConfig:
    cfg = Blip2QFormerConfig(
        vocab_size=64,
        hidden_size=H,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        encoder_hidden_size=VIS,
        cross_attention_frequency=2,
        use_qformer_text_input=True,
        pad_token_id=0,
    )
    cfg._attn_implementation = attn
    return cfg


@pytest.fixture(scope="module")
def qformer_parts():
    torch.manual_seed(0)
    cfg = tiny_qformer_config()
    return Blip2TextEmbeddings(cfg).eval(), Blip2QFormerModel(cfg).eval()


def _inputs(batch: int = 3, text_len: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(1, LMAX, H, generator=g)
    image = torch.randn(batch, 7, VIS, generator=g)
    ids = torch.randint(1, 64, (batch, text_len), generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 3:] = 0  # padded text
    return queries, image, ids, mask


# -- nested query attention ---------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_full_4d_mask_reproduces_transformers_own_forward(attn):
    torch.manual_seed(0)
    cfg = tiny_qformer_config(attn)
    emb, qformer = Blip2TextEmbeddings(cfg).eval(), Blip2QFormerModel(cfg).eval()
    queries, image, ids, mask = _inputs()
    with torch.no_grad():
        hidden = emb(input_ids=ids, query_embeds=queries.expand(3, -1, -1))
        mask2d = torch.cat([torch.ones(3, LMAX, dtype=torch.long), mask], dim=1)
        ref = qformer(
            query_embeds=hidden, query_length=LMAX, attention_mask=mask2d, encoder_hidden_states=image
        ).last_hidden_state
        ours = qformer_query_forward(
            qformer, queries, image, mode="full", text_embeds=emb(input_ids=ids), text_mask=mask
        )
        ref_q = qformer(query_embeds=queries.expand(3, -1, -1), encoder_hidden_states=image).last_hidden_state
        ours_q = qformer_query_forward(qformer, queries, image, mode="full")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_q, ref_q, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_one_lmax_pass_equals_separate_l_query_passes(attn):
    torch.manual_seed(0)
    cfg = tiny_qformer_config(attn)
    qformer = Blip2QFormerModel(cfg).eval()
    queries, image, _, _ = _inputs()
    with torch.no_grad():
        big = qformer_query_forward(qformer, queries, image, mode="nested")
        for length in (1, 2, 5, 9, LMAX):
            small = qformer_query_forward(qformer, queries[:, :length], image, mode="nested")
            assert (big[:, :length] - small).abs().max().item() < 1e-5, length
        # Sanity: with full attention the first L outputs of an L_max pass are not an L pass.
        full_big = qformer_query_forward(qformer, queries, image, mode="full")
        full_small = qformer_query_forward(qformer, queries[:, :5], image, mode="full")
    assert (full_big[:, :5] - full_small).abs().max().item() > 1e-3


@pytest.mark.parametrize("mode", ["nested", "full"])
def test_per_sample_lengths_with_instruction_equal_separate_passes(qformer_parts, mode):
    emb, qformer = qformer_parts
    queries, image, ids, mask = _inputs()
    lengths = torch.tensor([2, 7, LMAX])
    with torch.no_grad():
        text = emb(input_ids=ids)
        big = qformer_query_forward(
            qformer, queries, image, mode=mode, text_embeds=text, text_mask=mask, lengths=lengths
        )
        for b, length in enumerate(lengths.tolist()):
            sl = slice(b, b + 1)
            small = qformer_query_forward(
                qformer, queries[:, :length], image[sl], mode=mode, text_embeds=text[sl], text_mask=mask[sl]
            )
            valid = torch.cat([torch.ones(length, dtype=torch.bool), mask[b].bool()])
            got = torch.cat([big[b, :length], big[b, LMAX:]])
            assert (got[valid] - small[0][valid]).abs().max().item() < 1e-5, (mode, length)


def test_instruction_blind_to_queries_keeps_prefix_consistency(qformer_parts):
    emb, qformer = qformer_parts
    queries, image, ids, mask = _inputs()
    with torch.no_grad():
        text = emb(input_ids=ids)
        kw = dict(mode="nested", text_embeds=text, text_mask=mask, text_sees_queries=False)
        big = qformer_query_forward(qformer, queries, image, **kw)
        for length in (1, 4, 8):
            small = qformer_query_forward(qformer, queries[:, :length], image, **kw)
            assert (big[:, :length] - small[:, :length]).abs().max().item() < 1e-5


def test_mask_rules_are_as_documented():
    text_mask = torch.tensor([[1, 1, 0]])
    allowed = query_allowed(4, mode="nested", text_mask=text_mask, lengths=torch.tensor([3]))[0]
    q, t = slice(0, 4), slice(4, 7)
    expected_qq = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(allowed[q, q], expected_qq)
    assert torch.equal(allowed[q, t], torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool))  # queries read the text
    assert torch.equal(allowed[t, q], torch.tensor([[1, 1, 1, 0]] * 3, dtype=torch.bool))  # text reads queries < L
    assert torch.equal(allowed[t, t], torch.tensor([[1, 1, 0]] * 3, dtype=torch.bool))  # padding hidden
    assert allowed.any(-1).all()  # no row fully blocked
    blind = query_allowed(4, text_mask=text_mask, queries_see_text=False)[0]
    assert not blind[q, t].any()
    m = query_attention_mask(4)
    assert m.shape == (1, 1, 4, 4) and m[0, 0, 0, 1] == torch.finfo(torch.float32).min and m[0, 0, 1, 0] == 0
    with pytest.raises(ValueError):
        query_allowed(4, lengths=torch.tensor([5]))
    with pytest.raises(ValueError):
        query_allowed(4, mode="causal")  # type: ignore[arg-type]


# -- token bank ---------------------------------------------------------------------------
def test_token_bank_takes_checkpoint_queries_and_text_positions(tmp_path):
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    torch.manual_seed(0)
    qcfg = tiny_qformer_config().to_dict()
    qcfg["encoder_hidden_size"] = 16
    cfg = Blip2Config(
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
    Blip2ForImageTextRetrieval(cfg).save_pretrained(tmp_path)
    model = Blip2ForImageTextRetrieval.from_pretrained(tmp_path)
    bank = TokenBank.from_blip2(model.query_tokens, model.embeddings, l_max=40)
    assert bank.tokens.shape == (1, 40, H)
    assert torch.equal(bank.tokens[:, :32], model.query_tokens)
    assert torch.equal(bank.positions[0], model.embeddings.position_embeddings.weight[:40])
    # copies + noise for rows 32..39, a frozen (saved) buffer for the positions by default
    assert (bank.tokens[0, 32:] - model.query_tokens[0, :8]).abs().max() < 0.2
    assert not torch.equal(bank.tokens[0, 32:], model.query_tokens[0, :8])
    assert "positions" in dict(bank.named_buffers()) and "positions" in bank.state_dict()
    assert [n for n, _ in bank.named_parameters()] == ["tokens"]
    torch.testing.assert_close(bank(5), bank.tokens[:, :5] + bank.positions[:, :5])
    # learned positions are a copy: training them leaves the text path alone
    learn = TokenBank.from_blip2(
        model.query_tokens, model.embeddings, l_max=40, learn_positions=True, extra_init="normal"
    )
    assert "positions" in dict(learn.named_parameters())
    with torch.no_grad():
        learn.positions.add_(1.0)
    assert torch.equal(bank.positions[0], model.embeddings.position_embeddings.weight[:40])
    with pytest.raises(ValueError):
        TokenBank.from_blip2(model.query_tokens, model.embeddings, l_max=16)
    with pytest.raises(ValueError):
        bank(41)


def test_reorder_pretrained_permutes_the_checkpoint_rows_and_keeps_each_copy_noise_offset():
    pre = torch.randn(1, 4, H, generator=torch.Generator().manual_seed(3))
    table = torch.randn(16, H)
    bank = TokenBank(10, H, init_tokens=pre, position_table=table, generator=torch.Generator().manual_seed(4))
    noise = bank.tokens[0, 4:] - pre[0, torch.arange(4, 10) % 4]
    order = torch.tensor([2, 0, 3, 1])
    bank.reorder_pretrained(order)
    assert torch.equal(bank.tokens[0, :4], pre[0, order])  # new row i = old row order[i]
    torch.testing.assert_close(bank.tokens[0, 4:], pre[0, order][torch.arange(4, 10) % 4] + noise)
    assert torch.equal(bank.positions[0], table[:10])  # positions stay with their index
    for bad in ([0, 1, 2], [0, 0, 1, 2]):
        with pytest.raises(ValueError, match="permutation"):
            bank.reorder_pretrained(torch.tensor(bad))
    with pytest.raises(ValueError, match="permutation"):
        TokenBank(4, H, position_table=table).reorder_pretrained(torch.tensor([0]))  # no pretrained rows


# -- QScaler ------------------------------------------------------------------------------
@pytest.fixture()
def qscaler(qformer_parts):
    emb, qformer = qformer_parts
    torch.manual_seed(0)
    tok = build_word_tokenizer(TEXTS)
    return QScaler(QFormerTextEncoder(emb, qformer, tok), LengthConfig(l_base=2, l_max=LMAX, l_init=8, noise_std=0.1))


def test_qscaler_encoder_can_read_an_earlier_layer(qformer_parts):
    emb, qformer = qformer_parts
    tok = build_word_tokenizer(TEXTS)
    full = QFormerTextEncoder(emb, qformer, tok)
    one = QFormerTextEncoder(emb, qformer, tok, layers=1)
    assert len(one.qformer.encoder.layer) == 1 and len(qformer.encoder.layer) == 3  # the shared one is untouched
    assert qformer.config.num_hidden_layers == 3
    b = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = qformer(
            query_embeds=emb(input_ids=b["input_ids"]),
            query_length=0,
            attention_mask=b["attention_mask"],
            output_hidden_states=True,
        ).hidden_states[1][:, 0]
    torch.testing.assert_close(one.encode(TEXTS), ref)  # the [CLS] after the first layer
    assert not torch.allclose(full.encode(TEXTS), one.encode(TEXTS))
    for bad in (0, 4):
        with pytest.raises(ValueError, match="qscaler_layers"):
            QFormerTextEncoder(emb, qformer, tok, layers=bad)
    with pytest.raises(ValueError, match="copy_modules"):
        QFormerTextEncoder(emb, qformer, tok, layers=1, copy_modules=False)


def test_lean_text_path_equals_the_transformers_forward(qformer_parts):
    """The QScaler's lean forward (qformer_text.py) against transformers' Q-Former forward on
    padded texts: every token's output, the [CLS]-only last layer, and both poolings."""
    from lightning_modules.components.qformer_text import text_path_forward

    emb, qformer = qformer_parts
    qformer.eval()
    tok = build_word_tokenizer(TEXTS)
    b = tok(TEXTS, padding=True, return_tensors="pt")
    mask = b["attention_mask"]
    assert (mask == 0).any()  # the texts differ in length: padding is exercised
    with torch.no_grad():
        ref = qformer(query_embeds=emb(input_ids=b["input_ids"]), query_length=0, attention_mask=mask).last_hidden_state
        lean = text_path_forward(emb, qformer, b["input_ids"], mask)
        first = text_path_forward(emb, qformer, b["input_ids"], mask, first_token_only=True)
    real = mask.bool()
    torch.testing.assert_close(lean[real], ref[real], rtol=1e-5, atol=1e-5)  # padded rows are never read
    assert first.shape == (len(TEXTS), 1, ref.shape[-1])
    torch.testing.assert_close(first[:, 0], ref[:, 0], rtol=1e-5, atol=1e-5)
    m = mask[..., None].float()
    for pool, want in (("cls", ref[:, 0]), ("mean", (ref * m).sum(1) / m.sum(1))):
        torch.testing.assert_close(
            QFormerTextEncoder(emb, qformer, tok, pool=pool).encode(TEXTS), want, rtol=1e-5, atol=1e-5
        )


def test_qscaler_copy_keeps_only_the_text_path(qformer_parts):
    """The frozen copy drops the weights only images use; its features equal the shared text
    path's, and its own state dict loads back (strictly: a missing key is an error)."""
    from lightning_modules.components.qscaler import IMAGE_SIDE

    emb, qformer = qformer_parts
    tok = build_word_tokenizer(TEXTS)
    copy_ = QFormerTextEncoder(emb, qformer, tok)
    # shared modules get frozen: give it copies, the fixture's modules stay trainable
    shared = QFormerTextEncoder(copy.deepcopy(emb), copy.deepcopy(qformer), tok, copy_modules=False)
    assert any(hasattr(layer, "crossattention") for layer in qformer.encoder.layer)  # the model keeps them
    keys = list(copy_.state_dict())
    assert keys and not [k for k in keys if any(f".{n}." in k for n in IMAGE_SIDE)]
    n_copy, n_full = (sum(p.numel() for p in m.parameters()) for m in (copy_, shared))
    assert n_copy < n_full
    torch.testing.assert_close(copy_.encode(TEXTS), shared.encode(TEXTS))
    assert len(shared.state_dict()) > len(keys)
    own = copy_.state_dict()
    fresh = QFormerTextEncoder(emb, qformer, tok)
    fresh.load_state_dict(own, strict=True)
    with pytest.raises(RuntimeError, match="Missing"):
        fresh.load_state_dict({k: v for k, v in own.items() if "attention.output" not in k}, strict=True)


def test_qscaler_range_noise_and_frozen_encoder(qscaler, qformer_parts):
    cfg = qscaler.length
    qscaler.eval()
    out = qscaler(TEXTS)
    assert ((out.r >= 0) & (out.r <= 1)).all()
    assert ((out.length >= cfg.l_base) & (out.length <= cfg.l_max)).all() and out.length.dtype == torch.long
    assert torch.equal(out.r_used, out.r)  # no noise in evaluation
    assert torch.equal(qscaler(TEXTS).length, out.length)
    assert (out.length == cfg.l_init).all()  # the head starts at L_init
    qscaler.train()
    assert not qscaler.encoder.training  # the frozen encoder stays in eval mode
    noisy = qscaler(TEXTS)
    assert not torch.equal(noisy.r_used, noisy.r)
    assert ((noisy.r_used >= 0) & (noisy.r_used <= 1)).all()
    assert all(not p.requires_grad for p in qscaler.encoder.parameters())
    # a copy: the model's own Q-Former is untouched and still trainable
    assert qscaler.encoder.qformer is not qformer_parts[1]
    assert all(p.requires_grad for p in qformer_parts[1].parameters())
    # extreme head outputs stay in range
    with torch.no_grad():
        qscaler.head.net[-1].bias.fill_(50.0)
    qscaler.eval()
    assert (qscaler(TEXTS).length == cfg.l_max).all()


def _retrieval_loss(sims: torch.Tensor, log_mask: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    logits = soft_masked_logits(sims, log_mask, temperature)
    target = torch.arange(sims.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def test_qscaler_memo_reuses_frozen_features_in_training_only(qformer_parts):
    emb, qformer = qformer_parts
    tok = build_word_tokenizer(TEXTS)
    memo = QScaler(QFormerTextEncoder(emb, qformer, tok), LengthConfig(l_base=2, l_max=LMAX, l_init=8), memo=3)
    encoded = []
    encode = memo.encoder.encode
    memo.encoder.encode = lambda texts, max_padding=None: encoded.append(list(texts)) or encode(texts, max_padding)
    texts = [TEXTS[0], TEXTS[1], TEXTS[0]]
    ref = encode(texts)
    memo.train()
    torch.testing.assert_close(memo.features(texts), ref, rtol=1e-5, atol=1e-6)
    assert encoded == [[TEXTS[0], TEXTS[1]]]  # each distinct instruction once
    torch.testing.assert_close(memo.features(texts[::-1]), ref.flip(0), rtol=1e-5, atol=1e-6)
    assert len(encoded) == 1  # all known: no encoder call
    full = memo.features([TEXTS[2], TEXTS[3], TEXTS[0]])  # 2 new, 1 slot left: served, not stored
    torch.testing.assert_close(full, encode([TEXTS[2], TEXTS[3], TEXTS[0]]), rtol=1e-5, atol=1e-6)
    assert set(memo._memo) == {TEXTS[0], TEXTS[1]}
    memo.eval()
    memo.features(texts)
    assert encoded[-1] == texts  # evaluation always encodes
    with pytest.raises(ValueError, match="memo"):
        QScaler(memo.encoder, memo.length, memo=-1)


def test_gradient_reaches_qscaler_head_through_the_soft_mask_only(qscaler):
    qscaler.train()
    out = qscaler(TEXTS)
    g = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(4, 16, generator=g), dim=-1)
    images = F.normalize(torch.randn(4, LMAX, 16, generator=g), dim=-1)
    sims = per_query_sims(texts, images)
    loss = _retrieval_loss(sims, soft_log_mask(out.soft_length, LMAX, qscaler.length.mask_tau))
    loss.backward()
    head_grads = [p.grad for p in qscaler.head.parameters()]
    assert all(gr is not None for gr in head_grads) and any(gr.abs().sum() > 0 for gr in head_grads)
    assert all(p.grad is None for p in qscaler.encoder.parameters())


def test_task_loss_asks_for_more_queries_when_the_positive_needs_a_late_one():
    # Each text matches its image only through query 9; every other query is noise.
    cfg = LengthConfig(l_base=2, l_max=LMAX, l_init=4)
    sims = torch.full((4, 4, LMAX), -0.2)
    sims[torch.arange(4), torch.arange(4), 9] = 0.9
    length = torch.full((4,), 5.0, requires_grad=True)
    _retrieval_loss(sims, soft_log_mask(length, LMAX, cfg.mask_tau)).backward()
    assert (length.grad < 0).all()  # increasing L lowers the loss


def test_length_cost_pushes_l_down_when_the_task_is_indifferent(qscaler):
    qscaler.train()
    feats = qscaler.features(TEXTS)
    opt = torch.optim.SGD(qscaler.head.parameters(), lr=2.0)
    start = qscaler(features=feats).soft_length.mean().item()
    sims = torch.zeros(4, 4, LMAX)  # every query scores the same: L does not matter to the task
    for _ in range(10):
        out = qscaler(features=feats)
        task = _retrieval_loss(sims, soft_log_mask(out.soft_length, LMAX, qscaler.length.mask_tau))
        loss = task + sum(length_losses(out.r, out.soft_length, qscaler.length).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    qscaler.eval()
    end = qscaler(features=feats).soft_length.mean().item()
    assert end < start - 1.0, (start, end)


# -- dynamic length, scoring, oracle ------------------------------------------------------
def test_length_mapping_and_soft_mask_agree():
    cfg = LengthConfig(l_base=8, l_max=48)
    r = torch.linspace(0, 1, 101)
    hard = cfg.hard_length(r)
    assert hard.min() == 8 and hard.max() == 48 and hard.dtype == torch.long
    m = soft_log_mask(cfg.soft_length(r), 48, 1.0).exp()
    keep = torch.arange(48)[None] < hard[:, None]
    r_mid = (r * cfg.span) % 1 != 0.5  # away from exact rounding ties
    assert torch.equal((m > 0.5)[r_mid], keep[r_mid])
    with pytest.raises(ValueError):
        LengthConfig(l_base=10, l_max=8)


def test_length_limited_max_sim_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    texts = torch.randn(7, 8, generator=g)
    images = torch.randn(5, LMAX, 8, generator=g)
    lengths = torch.randint(1, LMAX + 1, (7,), generator=g)
    ref = torch.stack([torch.stack([(images[j, : lengths[i]] @ texts[i]).max() for j in range(5)]) for i in range(7)])
    t2i = length_limited_max_sim(Encoded(texts, lengths), Encoded(images), chunk=2)
    torch.testing.assert_close(t2i, ref)
    i2t = length_limited_max_sim(Encoded(images), Encoded(texts, lengths), chunk=3)
    torch.testing.assert_close(i2t, ref.T)
    full = length_limited_max_sim(Encoded(texts, torch.full((7,), LMAX)), Encoded(images))
    torch.testing.assert_close(full, max_sim(Encoded(texts), Encoded(images)))
    beyond = length_limited_max_sim(Encoded(texts, torch.full((7,), LMAX + 3)), Encoded(images), chunk=2)
    torch.testing.assert_close(beyond, full)  # a length past the outputs keeps them all
    torch.testing.assert_close(
        length_limited_max_sim(Encoded(images), Encoded(images)), max_sim(Encoded(images), Encoded(images))
    )


def test_oracle_length_is_the_shortest_prefix_with_the_final_rank():
    sims = torch.zeros(2, 3, 6)
    # text 0: its positive (image 0) wins from query 3 on; before, image 1 beats it.
    sims[0, 0] = torch.tensor([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])
    sims[0, 1] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    # text 1: its positive (image 1) is best from the first query on.
    sims[1, 1] = torch.tensor([0.8, 0.0, 0.0, 0.0, 0.0, 0.0])
    sims[1, 2] = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    positive = torch.tensor([[True, False, False], [False, True, False]])
    assert oracle_lengths(sims, positive).tolist() == [4, 1]
    cfg = LengthConfig(l_base=2, l_max=6, l_init=4)
    losses = length_losses(
        torch.tensor([0.5, 0.5]), torch.tensor([4.0, 4.0]), cfg, oracle=oracle_lengths(sims, positive)
    )
    assert set(losses) == {"length", "oracle"} and all(v > 0 for v in losses.values())


def _oracle_by_definition(sims, positive):
    """The oracle target spelled out: per text, the first L whose rank equals the rank at L_max."""
    out = []
    for q in range(sims.shape[0]):
        if not positive[q].any():
            out.append(sims.shape[-1])
            continue
        ranks = []
        for n in range(1, sims.shape[-1] + 1):
            score = sims[q, :, :n].amax(-1)
            best = score[positive[q]].max()
            negative = ~positive[q]
            ranks.append(1 + int(((score >= best) & negative).sum()))
        out.append(next(n + 1 for n, r in enumerate(ranks) if r <= ranks[-1]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_lengths_match_the_definition_with_ties_and_no_positive(seed):
    g = torch.Generator().manual_seed(seed)
    sims = torch.randint(0, 6, (7, 9, 5), generator=g).float() / 5  # coarse values: many ties
    positive = torch.rand(7, 9, generator=g) < 0.2
    positive[0] = False  # a text without a positive
    positive[1, :3] = True  # several positives
    assert oracle_lengths(sims, positive).tolist() == _oracle_by_definition(sims, positive)


def test_length_major_lays_blocks_side_by_side_length_first():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 2, 5)
    out = length_major(a, b)
    assert out.shape == (5, 3, 6) and out.is_contiguous()
    assert torch.equal(out, torch.cat([a, b], dim=1).permute(2, 0, 1))


def test_oracle_negatives_make_the_target_longer_where_late_queries_are_needed():
    """Text 0's positive beats the in-batch negative from query 0 on, but a pooled
    negative only from query 3 on: with the pool the oracle asks for 4 queries, not 1."""
    from lightning_modules.components.dynamic_length import dynamic_itc

    texts = torch.eye(4)[:2]  # text 0 along axis 0, text 1 along axis 1
    images = torch.zeros(2, 4, 4)
    images[0, :, 0] = torch.tensor([0.6, 0.6, 0.6, 0.9])  # text 0's positive: its query 3 matches best
    images[1, :, 0] = 0.1  # for text 0 an easy in-batch negative
    images[1, :, 1] = 0.8  # text 1's positive, matched from query 0 on
    pool = torch.zeros(1, 4, 4)
    pool[0, :, 0] = 0.7  # a hard negative of an earlier batch for text 0
    positives = torch.eye(2, dtype=torch.bool)
    cfg = LengthConfig(l_base=1, l_max=4, l_init=2, oracle_weight=1.0)
    r = torch.tensor([0.0, 0.0])
    alone, *_ = dynamic_itc(texts, images, cfg.soft_length(r), r, positives, 0.07, cfg)
    pooled, *_ = dynamic_itc(texts, images, cfg.soft_length(r), r, positives, 0.07, cfg, oracle_negatives=pool)
    # text 0's target r* = 0 without the pool (L* = 1 = L_base: BCE(0, 0) ~ 0), r* = 1 with it (L* = 4)
    assert alone["oracle"].item() < 1e-4 < 1.0 < pooled["oracle"].item()
    torch.testing.assert_close(alone["itc"], pooled["itc"])  # the pool never enters the task loss


def test_dynamic_itc_trains_the_qscaler_end_to_end(qscaler):
    from lightning_modules.components.dynamic_length import dynamic_itc

    qscaler.train()
    out = qscaler(TEXTS)
    g = torch.Generator().manual_seed(0)
    texts = F.normalize(torch.randn(4, 16, generator=g), dim=-1).requires_grad_()
    images = F.normalize(torch.randn(4, LMAX, 16, generator=g), dim=-1)
    index = torch.tensor([0, 1, 1, 2])
    losses, sim, _ = dynamic_itc(
        texts,
        images,
        out.soft_length,
        out.r,
        index[:, None] == index[None, :],
        0.07,
        qscaler.length,
        label_smoothing=0.1,
    )
    assert set(losses) == {"itc", "itc_lmax", "length", "oracle", "oracle_length"} and sim.shape == (4, 4)
    plain = soft_masked_logits(per_query_sims(texts, images), soft_log_mask(out.soft_length, LMAX, 1.0), 0.07)
    torch.testing.assert_close(sim, plain * 0.07)
    sum(losses.values()).backward()
    assert texts.grad is not None and qscaler.head.net[1].weight.grad.abs().sum() > 0


def test_task_loss_asks_for_fewer_queries_when_a_negative_wins_late():
    sims = torch.full((4, 4, LMAX), -0.2)
    sims[torch.arange(4), torch.arange(4), 0] = 0.9  # every positive is matched by query 0
    sims[torch.arange(4), (torch.arange(4) + 1) % 4, 6] = 0.95  # and beaten by a negative at query 6
    length = torch.full((4,), 6.0, requires_grad=True)
    _retrieval_loss(sims, soft_log_mask(length, LMAX, 1.0)).backward()
    assert (length.grad > 0).all()  # shortening L lowers the loss


def test_end_to_end_l_grows_only_for_texts_whose_positive_needs_late_queries():
    """A toy retrieval problem: 'simple' texts are matched by an image's first query, 'complex'
    ones only by queries >= 9 (their early queries are shared by all complex images). Trained
    through the soft mask + length cost alone (no oracle), the QScaler head learns L >= 10
    for complex texts and shrinks simple ones towards L_base."""
    torch.manual_seed(0)
    b, d, late = 16, 48, 9
    basis = torch.eye(d)
    complex_ = torch.arange(b) % 2 == 1
    shared = basis[-1]
    images = torch.zeros(b, LMAX, d)
    texts = torch.zeros(b, d)
    for i in range(b):
        if complex_[i]:
            images[i, :late] = shared
            images[i, late:] = F.normalize(shared + basis[i], dim=0)
            texts[i] = F.normalize(shared + basis[i], dim=0)
        else:
            images[i, :] = basis[i]
            texts[i] = basis[i]
    feats = torch.stack([complex_.float(), 1 - complex_.float()], 1) + 0.01 * torch.randn(b, 2)
    cfg = LengthConfig(l_base=2, l_max=LMAX, l_init=6, noise_std=0.05, length_weight=0.1, oracle_weight=0.0)
    from lightning_modules.components.dynamic_length import add_length_noise, dynamic_itc
    from lightning_modules.components.qscaler import QScalerHead

    head = QScalerHead(2, 16, r_init=cfg.r_init)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    eye = torch.eye(b, dtype=torch.bool)
    for _ in range(80):
        r = torch.sigmoid(head(feats))
        soft = cfg.soft_length(add_length_noise(r, cfg.noise_std, True))
        losses, *_ = dynamic_itc(texts, images, soft, r, eye, 0.07, cfg)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    with torch.no_grad():
        lengths = cfg.hard_length(torch.sigmoid(head(feats)))
    assert (lengths[complex_] >= late + 1).all(), lengths
    assert (lengths[~complex_] <= 4).all(), lengths


def test_qscaler_on_a_frozen_clip_text_encoder(tmp_path):
    from lightning_modules.clip import ClipConfig, ClipRetrieval
    from lightning_modules.components.qscaler import HFTextEncoder
    from lightning_modules.optim import OptimConfig

    torch.manual_seed(0)
    clip = ClipRetrieval.create(
        ClipConfig(
            image_size=16,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        TEXTS,
    )
    clip.save_checkpoint(tmp_path / "clip")
    enc = HFTextEncoder.from_pretrained(str(tmp_path / "clip"))
    assert enc.pool == "pooler" and enc.dim == 32
    feats = enc.encode(TEXTS)
    assert feats.shape == (4, 32)
    with torch.no_grad():
        ref = clip.model.text_model(**clip.tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(feats, ref)
    out = QScaler(enc, LengthConfig(l_base=2, l_max=LMAX, l_init=8)).eval()(TEXTS)
    assert (out.length == 8).all()


def test_qscaler_encoder_runs_in_length_groups(qformer_parts, tmp_path):
    """``group_padding``: the frozen encoder runs short and long instructions in separate
    calls, each trimmed to its longest, and the features equal one padded batch's."""
    from lightning_modules.clip import ClipConfig, ClipRetrieval
    from lightning_modules.components.qscaler import HFTextEncoder
    from lightning_modules.optim import OptimConfig

    texts = [
        "red",
        "a small red circle left of a large blue square on a green background",
        "blue",
        "a large blue square above a small red circle on a gray background",
    ]
    torch.manual_seed(0)
    clip = ClipRetrieval.create(
        ClipConfig(
            image_size=16,
            patch_size=8,
            vision_width=32,
            vision_layers=1,
            text_width=32,
            text_layers=1,
            heads=2,
            embed_dim=16,
        ),
        OptimConfig(),
        texts + TEXTS,
    )
    clip.save_checkpoint(tmp_path / "clip")
    emb, qformer = qformer_parts
    encoders = [
        HFTextEncoder.from_pretrained(str(tmp_path / "clip")),
        QFormerTextEncoder(emb, qformer, build_word_tokenizer(texts + TEXTS)),
    ]
    for enc in encoders:
        widths = []
        encode_ids = enc.encode_ids
        enc.encode_ids = lambda ids, mask, widths=widths, encode_ids=encode_ids: (
            widths.append(tuple(ids.shape)) or encode_ids(ids, mask)
        )
        grouped = QScaler(enc, LengthConfig(l_base=2, l_max=LMAX, l_init=8), group_padding=0.5).eval()
        feats = grouped.features(texts)
        assert [w[0] for w in widths] == [2, 2] and widths[0][1] < widths[1][1] / 2  # short pair, long pair
        widths.clear()
        ref = QScaler(enc, grouped.length).eval().features(texts)
        assert len(widths) == 1 and widths[0][0] == 4  # None: one padded batch
        torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
