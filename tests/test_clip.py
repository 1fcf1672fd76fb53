"""CLIP: the full-size loading path (save_pretrained -> from_pretrained), the protocol, training."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

from datamodules.batch import TrainBatch
from lightning_modules.base import Encoded, RetrievalModel
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.optim import OptimConfig

TEXTS = ["find images of a red circle", "a large blue square left of a green star", "show me a yellow cross"]


def _tiny() -> ClipRetrieval:
    torch.manual_seed(0)
    return ClipRetrieval.create(
        ClipConfig(
            image_size=32,
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


def test_honours_the_retrieval_protocol():
    m = _tiny().eval()
    assert isinstance(m, RetrievalModel)
    px = torch.stack([m.image_transform()(Image.new("RGBA", (50, 37), (255, 0, 0, 128))) for _ in range(2)])
    assert px.shape == (2, 3, 32, 32)
    with torch.no_grad():
        img, txt = m.encode_images(px), m.encode_texts(TEXTS)
    assert img.emb.shape == (2, 16) and txt.emb.shape == (3, 16)
    assert torch.allclose(img.emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    s = m.score(txt, img)
    assert s.shape == (3, 2) and torch.allclose(s, txt.emb @ img.emb.T)


def test_full_size_path_loads_a_saved_hub_style_checkpoint(tmp_path):
    """A checkpoint laid out like a hub repo (model, tokenizer, image processor) loads through
    the same code as ``openai/clip-vit-large-patch14``, with identical outputs."""
    src = _tiny().eval()
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    loaded = ClipRetrieval.create(ClipConfig(pretrained=str(tmp_path)), OptimConfig()).eval()
    assert loaded.image_transform().resize == 36 and loaded.image_transform().crop == 32
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src.encode_images(px).emb, loaded.encode_images(px).emb, atol=1e-6)
        assert torch.allclose(src.encode_texts(TEXTS).emb, loaded.encode_texts(TEXTS).emb, atol=1e-6)
    # nothing of the checkpoint was left unused: the state dicts match key for key
    assert set(CLIPModel.from_pretrained(tmp_path).state_dict()) == set(loaded.model.state_dict())


def test_suite_checkpoint_round_trip(tmp_path):
    src = _tiny().eval()
    src.save_checkpoint(tmp_path / "ckpt")
    again = ClipRetrieval.load_checkpoint(tmp_path / "ckpt").eval()
    assert again.config == src.config
    want, got = src.model.state_dict(), again.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in got.items())
    with torch.no_grad():
        a, b = src.encode_texts(TEXTS), again.encode_texts(TEXTS)
    # equal weights; the GEMM kernels may round differently for other buffers (~1e-8)
    torch.testing.assert_close(a.emb, b.emb, atol=1e-6, rtol=0)


def test_a_few_steps_reduce_the_contrastive_loss():
    m = _tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    torch.manual_seed(1)
    px = torch.randn(3, 3, 32, 32)
    batch = TrainBatch(torch.arange(3), px, TEXTS)
    first = m._loss(batch).item()
    for _ in range(30):
        loss = m._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_encoded_validates_shapes():
    import pytest

    with pytest.raises(ValueError, match="Encoded.emb"):
        Encoded(torch.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        Encoded(torch.zeros(3, 4, 2), torch.ones(2))
