"""A lean forward of a BLIP-2 Q-Former's text-only path, for the QScaler's frozen copy.

The QScaler runs the frozen Q-Former text path (``Blip2TextEmbeddings`` + ``Blip2QFormerModel``
with ``query_length=0``) once per instruction, before the instruction-conditioned Q-Former
pass, so its cost is on the instruction path. Two things make transformers' own forward
slower than it needs to be there:

* per-module overhead: at batch 1 on a CPU (a tiny Q-Former, ~15 tokens) about 40 % of the
  call is Python and mask construction, not arithmetic;
* the QScaler pools the first token ([CLS]), but the last layer computes every token.

:func:`text_path_forward` runs the same modules' weights with ``F.scaled_dot_product_attention``
(boolean padding mask) and, when only the first token is pooled, computes only that row's
query, attention output and feed-forward in the last layer (keys and values still come from
every token). The result equals transformers' forward up to float rounding
(``tests/test_idq_components.py`` compares both, with padding, for CLS and mean pooling).
Layers of the text path only: the query-side modules (cross-attention, ``*_query``) are never
touched, so a copy may have dropped them. Evaluation only (no dropout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lightning_modules.components.row_attention import rows_attention

if TYPE_CHECKING:
    from transformers.models.blip_2.modeling_blip_2 import (
        Blip2QFormerLayer,
        Blip2QFormerModel,
        Blip2QFormerMultiHeadAttention,
    )


def _self_attention(
    attn: Blip2QFormerMultiHeadAttention, hidden: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """The Q-Former's self-attention of ``rows`` over ``hidden`` (keys masked by ``keep``), before the output dense."""
    return rows_attention(attn.query, attn.key, attn.value, hidden, rows, attn.num_attention_heads, keep, attn.scaling)


def _layer(layer: Blip2QFormerLayer, hidden: torch.Tensor, keep: torch.Tensor, first_only: bool) -> torch.Tensor:
    """One ``Blip2QFormerLayer`` with ``query_length=0``; ``first_only``: only token 0's output."""
    rows = hidden[:, :1] if first_only else hidden
    self_out = layer.attention.output
    attended = self_out.LayerNorm(self_out.dense(_self_attention(layer.attention.attention, hidden, rows, keep)) + rows)
    ffn = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attended))
    return layer.output.LayerNorm(layer.output.dense(ffn) + attended)


def text_path_forward(
    embeddings: nn.Module,
    qformer: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    first_token_only: bool = False,
) -> torch.Tensor:
    """Last hidden state of the Q-Former text path, ``[B, T, H]`` (``[B, 1, H]`` with
    ``first_token_only``): transformers' ``qformer(query_embeds=embeddings(input_ids),
    query_length=0, attention_mask=attention_mask)`` in eval mode, computed leanly."""
    model = cast("Blip2QFormerModel", qformer)
    hidden = model.layernorm(embeddings(input_ids=input_ids).to(model.layernorm.weight.dtype))
    keep = attention_mask.bool()[:, None, None, :]
    layers = cast("list[Blip2QFormerLayer]", list(model.encoder.layer))
    for i, layer in enumerate(layers):
        hidden = _layer(layer, hidden, keep, first_only=first_token_only and i == len(layers) - 1)
    return hidden
