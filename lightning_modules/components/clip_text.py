"""A lean forward of a transformers CLIP text tower (``CLIPTextModel``), for the QScaler.

At tiny size the QScaler's frozen language encoder is the tiny CLIP's text tower
(:class:`~lightning_modules.components.qscaler.HFTextEncoder`). It runs once per instruction
before ours' instruction-conditioned Q-Former pass, so at batch 1 it is on the latency path
of re-ranking and VQA. There transformers' forward is mostly overhead: per-module hooks,
output capture and causal-mask construction cost about as much as the arithmetic, and the
last layer computes every token although the pooled feature (CLIP's EOS token) is one row.

:func:`clip_text_forward` runs the same modules' weights with ``F.scaled_dot_product_attention``
(a boolean causal-and-padding mask) and, for a pooled feature, computes only that row's
query, attention output and MLP in the last layer (keys and values still come from every
token). The result equals transformers' forward up to float rounding
(``tests/test_clip_text.py`` compares both, with padding, for every pooling). Pre-LN layers,
as CLIP's: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``, then ``final_layer_norm``.
Evaluation only (no dropout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lightning_modules.components.row_attention import rows_attention

if TYPE_CHECKING:
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer, CLIPTextModel


def eos_positions(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of each row's pooled (EOS) token, chosen exactly as ``CLIPTextModel`` does:
    the largest id when the config's ``eos_token_id`` is the legacy 2, else the first EOS."""
    ids = input_ids.to(torch.int)
    eos_token_id = cast(int, model.eos_token_id)  # CLIPTextConfig's: an int (typed int | list[int] | None)
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def _attention(attn: CLIPAttention, normed: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``CLIPAttention`` of ``rows`` over ``normed`` (keys masked by ``keep``), after ``out_proj``."""
    return attn.out_proj(
        rows_attention(attn.q_proj, attn.k_proj, attn.v_proj, normed, rows, attn.num_heads, keep, attn.scale)
    )


def _layer(
    layer: CLIPEncoderLayer,
    hidden: torch.Tensor,
    keep: torch.Tensor,
    rows: torch.Tensor | None,
    row_keep: torch.Tensor | None,
) -> torch.Tensor:
    """One ``CLIPEncoderLayer``; with ``rows`` (``[B]`` token index per sample) only those rows' outputs ``[B, 1, H]``."""
    normed = layer.layer_norm1(hidden)
    if rows is None:
        residual, query, mask = hidden, normed, keep
    else:
        assert row_keep is not None  # clip_text_forward passes both or neither
        pick = torch.arange(hidden.shape[0], device=hidden.device), rows
        residual, query, mask = hidden[pick][:, None], normed[pick][:, None], row_keep
    hidden = residual + _attention(layer.self_attn, normed, query, mask)
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def clip_text_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``model``'s ``last_hidden_state`` ``[B, T, H]`` (after ``final_layer_norm``), or with
    ``rows`` (``[B]`` token index per sample, e.g. :func:`eos_positions`) only those rows,
    ``[B, H]``: transformers' ``model(input_ids, attention_mask)`` in eval mode, computed leanly.

    ``model``: a ``CLIPTextModel`` (``embeddings``, ``encoder.layers``, ``final_layer_norm``)."""
    text = cast("CLIPTextModel", model)
    hidden = text.embeddings(input_ids=input_ids)
    t = input_ids.shape[1]
    pad = attention_mask.bool()
    causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
    keep = causal[None, None] & pad[:, None, None, :]  # [B, 1, T, T]
    row_keep = None
    if rows is not None:  # the selected row's causal-and-padding keys, [B, 1, 1, T]
        row_keep = (torch.arange(t, device=input_ids.device)[None] <= rows[:, None]) & pad
        row_keep = row_keep[:, None, None, :]
    layers = cast("list[CLIPEncoderLayer]", list(text.encoder.layers))
    if not layers:
        raise ValueError("clip_text_forward needs a text tower with at least one layer")
    for i, layer in enumerate(layers):
        last = rows is not None and i == len(layers) - 1
        hidden = _layer(layer, hidden, keep, rows if last else None, row_keep if last else None)
    hidden = text.final_layer_norm(hidden)
    return hidden[:, 0] if rows is not None else hidden
