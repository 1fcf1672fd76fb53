"""scripts/probe_qformer_attention.py measures what it says: with zero query/key weights the
Q-Former's attention is exactly uniform (the queries give the text its token share, the
cross-attention has the uniform entropy), and a large init makes it selective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.optim import OptimConfig
from tests.script_modules import load_script
from tests.tiny_blip2 import save_tiny_clip

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_qformer_attention.py"
TEXTS = ["a red circle", "a large blue square left of a green star", "a yellow cross"]
TINY_QFORMER = dict(
    qformer_hidden=32, qformer_layers=2, qformer_heads=2, qformer_intermediate=64, embed_dim=16, num_query_tokens=4
)


def _probe():
    return load_script(SCRIPT)


def _measure(head, tokens, ids, mask):
    probe = _probe()
    inputs, cross = probe.attention_inputs(head, tokens, ids, mask)
    n_query, heads = head.query_tokens.shape[1], head.qformer_config.num_attention_heads
    layers = head.qformer.encoder.layer
    shares = [
        probe.attention_to_text(lay.attention.attention, h, mask, n_query, heads) for lay, h in zip(layers, inputs)
    ]
    entropy = [
        probe.cross_entropy_share(layers[i].crossattention.attention, q, tokens, heads) for i, q in cross.items()
    ]
    return shares, entropy


@pytest.fixture
def model(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip", TEXTS)  # vision width 32: the tokens' width below

    def build(init_range: float) -> Blip2Retrieval:
        cfg = Blip2Config(vision_checkpoint=str(clip), qformer_init_range=init_range, **TINY_QFORMER)
        return Blip2Retrieval.create(cfg, OptimConfig(), TEXTS).eval()

    return build


def test_zero_query_key_weights_give_uniform_attention(model):
    m = model(0.05)
    for layer in m.head.qformer.encoder.layer:
        for att in [layer.attention.attention] + (
            [layer.crossattention.attention] if layer.has_cross_attention else []
        ):
            torch.nn.init.zeros_(att.query.weight), torch.nn.init.zeros_(att.query.bias)
    ids, mask = m.tokenize(TEXTS)
    tokens = torch.randn(len(TEXTS), 5, 32)
    shares, entropy = _measure(m.head, tokens, ids, mask)
    text = mask.sum(1).float()
    uniform = (text / (text + m.head.query_tokens.shape[1])).mean().item()
    assert len(shares) == 2 and len(entropy) == 1  # 2 layers, cross-attention every 2nd
    assert shares == pytest.approx([uniform] * 2, abs=1e-5)
    assert entropy == pytest.approx([1.0], abs=1e-5)


def test_a_large_init_makes_the_cross_attention_selective(model):
    default = model(0.02)
    ids, mask = default.tokenize(TEXTS)
    tokens = torch.randn(len(TEXTS), 5, 32) * 3
    _, small = _measure(default.head, tokens, ids, mask)
    _, large = _measure(model(0.5).head, tokens, ids, mask)
    assert small[0] > 0.99 and large[0] < small[0] - 0.1
