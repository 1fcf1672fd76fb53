"""The ITM head learns: after a short training through the real loss path (``Blip2Retrieval.
_losses``: ITC + ITM with sampled negatives) on tiny data, matching (image, text) pairs score
above non-matching ones. Issue 28: on the embedded benchmark the tiny ITM stayed at the class
prior; this checks that the head, its inputs and its loss can separate the two at all."""

from __future__ import annotations

import pytest
import torch

from datamodules.batch import TrainBatch
from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.optim import OptimConfig

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "star"]
TEXTS = [f"a {c} {s}" for c in COLOURS for s in SHAPES][:8]
TINY_CLIP = dict(
    image_size=32, patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=1, heads=2, embed_dim=16
)
TINY_QFORMER = dict(
    qformer_hidden=32, qformer_layers=2, qformer_heads=2, qformer_intermediate=64, embed_dim=16, num_query_tokens=4
)


@pytest.fixture
def model(tmp_path) -> Blip2Retrieval:
    torch.manual_seed(0)
    ClipRetrieval.create(ClipConfig(**TINY_CLIP), OptimConfig(), TEXTS).save_checkpoint(tmp_path / "clip")
    cfg = Blip2Config(
        vision_checkpoint=str(tmp_path / "clip"),
        itm_hard_fraction=0.0,  # uniform negatives: the schedule under which the tiny ITM leaves the prior
        itm_weight=5.0,
        itc_label_smoothing=0.0,
        **TINY_QFORMER,
    )
    return Blip2Retrieval.create(cfg, OptimConfig(), TEXTS)


def _itm_matrix(m: Blip2Retrieval, tokens: torch.Tensor) -> torch.Tensor:
    """``[images, texts]`` class-1 ITM logits of every pair (the re-ranking scorer)."""
    n = len(TEXTS)
    ids, mask = m.tokenize(TEXTS)
    ii, ti = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    with torch.no_grad():
        return m.itm_scores(tokens[ii], ids[ti], mask[ti]).view(n, n)


def test_itm_separates_matching_from_non_matching_pairs_after_short_training(model):
    torch.manual_seed(1)
    tokens = torch.randn(len(TEXTS), 5, 32)  # cached frozen vision tokens [B, N, D], one "image" per text
    batch = TrainBatch(torch.arange(len(TEXTS)), tokens, TEXTS)
    eye = torch.eye(len(TEXTS), dtype=torch.bool)
    before = _itm_matrix(model.eval(), tokens)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(200):  # the ITM leaves the prior once the ITC has aligned the two sides (~100 steps)
        losses = model._losses(batch)
        first = first if first is not None else losses["itm"].item()
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    after = _itm_matrix(model.eval(), tokens)
    gap = lambda s: (s[eye].mean() - s[~eye].mean()).item()  # noqa: E731
    assert abs(gap(before)) < 0.5  # untrained: no separation
    assert first > 0.6 and losses["itm"].item() < 0.45  # from the class prior's cross entropy (0.64) down
    assert gap(after) > 1.5
    # most images rank their own text first among the 8 texts (chance: 1 in 8)
    assert (after.argmax(1) == torch.arange(len(TEXTS))).float().mean() >= 0.5
