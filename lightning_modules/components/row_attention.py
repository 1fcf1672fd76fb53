"""Multi-head attention of selected rows over every token: the core of the lean text forwards.

The lean forwards of :mod:`~lightning_modules.components.qformer_text` (the BLIP-2 Q-Former's
text path) and :mod:`~lightning_modules.components.clip_text` (a CLIP text tower) run a
transformers layer's own projection weights through ``F.scaled_dot_product_attention``, and in
their last layer only for the one pooled row (keys and values still come from every token).
The two layouts differ only in what the projections are called; this is the shared part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rows_attention(
    query: nn.Module,
    key: nn.Module,
    value: nn.Module,
    hidden: torch.Tensor,
    rows: torch.Tensor,
    heads: int,
    keep: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of ``rows`` ``[B, R, H]`` over ``hidden`` ``[B, T, H]`` with ``heads`` heads
    (projections ``query``, ``key``, ``value``; keys masked by ``keep``, broadcastable to
    ``[B, heads, R, T]``, True = attend): ``[B, R, heads * head_dim]``, before the output projection."""
    b, t, _ = hidden.shape
    r = rows.shape[1]
    q = query(rows).view(b, r, heads, -1).transpose(1, 2)
    k = key(hidden).view(b, t, heads, -1).transpose(1, 2)
    v = value(hidden).view(b, t, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    return out.transpose(1, 2).reshape(b, r, -1)
