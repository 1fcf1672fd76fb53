"""The lean CLIP text forward (``components/clip_text.py``) against transformers' ``CLIPTextModel``."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from lightning_modules.components.clip_text import clip_text_forward, eos_positions
from lightning_modules.components.qscaler import HFTextEncoder
from lightning_modules.components.word_tokenizer import build_word_tokenizer

TEXTS = [
    "find images of a red circle",
    "a small blue square left of a big green star on a gray background",
    "red",
    "a large blue square above a small red circle",
]


def _tower(tok, eos_token_id: int) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=tok.vocab_size + 8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_act="quick_gelu",
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_token_id,
    )
    return CLIPTextModel(config).eval()


@pytest.mark.parametrize("legacy_eos", [False, True])
def test_lean_clip_text_forward_equals_transformers(legacy_eos):
    """Every token's output, the pooled (EOS) row computed alone in the last layer, and the
    three poolings of :class:`HFTextEncoder`, on padded texts of different lengths; with the
    legacy ``eos_token_id == 2`` CLIP pools at the largest id instead of the first EOS."""
    tok = build_word_tokenizer(TEXTS)
    model = _tower(tok, 2 if legacy_eos else tok.eos_token_id)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # padding is exercised
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
        lean = clip_text_forward(model, ids, mask)
        rows = eos_positions(model, ids)
        pooled = clip_text_forward(model, ids, mask, rows)
    if not legacy_eos:
        assert rows.tolist() == [int(m.sum()) - 1 for m in mask]  # the EOS closes each text
    real = mask.bool()
    torch.testing.assert_close(lean[real], ref.last_hidden_state[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=1e-5, atol=1e-5)
    m = mask[..., None].float()
    wants = {
        "pooler": ref.pooler_output,
        "cls": ref.last_hidden_state[:, 0],
        "mean": (ref.last_hidden_state * m).sum(1) / m.sum(1),
    }
    for pool, want in wants.items():
        enc = HFTextEncoder(model, tok, pool=pool)
        assert enc.lean_clip
        torch.testing.assert_close(enc.encode(TEXTS), want, rtol=1e-5, atol=1e-5)


def test_lean_clip_text_forward_needs_a_layer():
    tok = build_word_tokenizer(TEXTS)
    model = _tower(tok, tok.eos_token_id)
    model.encoder.layers = torch.nn.ModuleList()
    ids = tok(TEXTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="at least one layer"):
        clip_text_forward(model, ids["input_ids"], ids["attention_mask"], torch.tensor([0]))
