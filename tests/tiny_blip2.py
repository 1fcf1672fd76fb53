"""Tiny random suite checkpoints for tests: BLIP2 (CLIP vision tower + 2-layer Q-Former) and CLIP.

The models that start from a BLIP2 checkpoint (ours, dynamicvit, crossget) and the cost
tests build on it; each test module saves one in a module-scoped fixture. Ours at tiny size
also reads a CLIP checkpoint's text tower (its QScaler encoder): :func:`save_tiny_clip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from lightning_modules.blip2 import Blip2Config, Blip2Retrieval
from lightning_modules.clip import ClipConfig, ClipRetrieval
from lightning_modules.components.image_transform import ImageTransform
from lightning_modules.components.qformer_head import HeadShape, QFormerHead
from lightning_modules.components.vision_tower import ClipVisionTower
from lightning_modules.components.word_tokenizer import build_word_tokenizer
from lightning_modules.optim import OptimConfig


def save_tiny_blip2(
    path: Path,
    texts: Sequence[str],
    num_queries: int,
    *,
    vision_layers: int = 1,
    image_size: int = 16,
    k_test: int = 3,
    vision_checkpoint: str | None = None,
) -> Path:
    """Seeded random weights (vision width 32, patch 8; Q-Former width 32, 4 heads, embed 16),
    a word tokenizer over ``texts``, saved with ``Blip2Retrieval.save_checkpoint``;
    ``vision_checkpoint``: the CLIP folder its config names as the tower's origin (ours' tiny
    QScaler reads that CLIP's text tower)."""
    torch.manual_seed(0)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        )
    )
    tower = ClipVisionTower(vision, ImageTransform(image_size, image_size))
    tok = build_word_tokenizer(list(texts), 48)
    cfg = Blip2Config(
        qformer_hidden=32,
        qformer_layers=2,
        qformer_heads=4,
        qformer_intermediate=64,
        embed_dim=16,
        num_query_tokens=num_queries,
        dropout=0.0,
        k_test=k_test,
        cache_features=False,
        vision_checkpoint=vision_checkpoint,
    )
    head = QFormerHead.random(
        cfg.qformer_config(len(tok), tok.pad_token_id, tower.hidden_size), HeadShape(num_queries, 16, 0.07), seed=0
    )
    Blip2Retrieval(tower, head, tok, cfg).save_checkpoint(path)
    return path


def save_tiny_clip(path: Path, texts: Sequence[str]) -> Path:
    """Seeded random tiny CLIP (text width 32, 1 layer) saved with ``ClipRetrieval.save_checkpoint``."""
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
        texts,
    )
    clip.save_checkpoint(path)
    return path
