"""Q-Former passes whose cross-attention to the image tokens carries a per-token bias.

The token-reduction baselines hand the Q-Former image tokens that are not all equal:

* DynamicViT, while training, keeps every token but drops some by decision: a dropped
  token must not be attended by the Q-Former either (:func:`keep_bias`: 0 kept, the
  dtype's minimum dropped);
* CrossGET merges tokens: a token standing for ``s`` original ones gets ``log s`` added to
  its cross-attention logits (proportional attention, :func:`size_bias`), so that it
  weighs in as the ``s`` tokens it replaced would have.

transformers' Q-Former takes an already prepared 4-D encoder mask as it is and adds it to
the attention logits (sdpa and eager alike), so the bias ``[B, N]`` travels as a
``[B, 1, 1, N]`` additive mask. With a zero bias both passes equal the head's own
(:meth:`QFormerHead.query_outputs`, :meth:`QFormerHead.itm_logits`) to float precision.

While DynamicViT trains, a hard additive mask would give the keep decisions no gradient
from the Q-Former (a dropped token has zero attention weight, so zero gradient):
:func:`policy_cross_attention` instead swaps, for the duration of a ``with`` block, the
Q-Former's cross-attention for one with DynamicViT's masked softmax (:func:`policy_softmax`:
weights multiplied by the straight-through keep mask, renormalised), equal in value to the
hard mask. It follows transformers 5.x's ``Blip2QFormerMultiHeadAttention`` (query / key /
value, ``scaling``); the tests compare it with the hard mask and the head's own pass.

To travel through the evaluation with the image tokens (``Encoded.extra``, re-ranking), a
bias is packed as one extra channel after the features (:func:`pack`, :func:`unpack`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from lightning_modules.components.qformer_head import QFormerHead

if TYPE_CHECKING:
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerLayer, Blip2QFormerMultiHeadAttention


def keep_bias(keep_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, N]`` bias of a keep mask (> 0.5 = kept): 0 kept, the dtype's minimum dropped."""
    return torch.where(keep_mask.detach() > 0.5, 0.0, torch.finfo(dtype).min).to(dtype)


def size_bias(sizes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, N]`` proportional-attention bias ``log(size)`` of merged tokens (0 for size 1)."""
    return sizes.detach().log().to(dtype)


def _mask4d(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return bias.to(dtype)[:, None, None, :]


def query_outputs(
    head: QFormerHead, query_embeds: torch.Tensor, image_tokens: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Q-Former query outputs ``[B, L, H]`` over image tokens ``[B, N, D]`` with an optional
    cross-attention bias ``[B, N]`` (None: the head's own pass)."""
    if bias is None:
        return head.query_outputs(query_embeds, image_tokens)
    dtype = head.query_tokens.dtype
    out = head.qformer(
        query_embeds=query_embeds.expand(image_tokens.shape[0], -1, -1),
        encoder_hidden_states=image_tokens.to(dtype),
        encoder_attention_mask=_mask4d(bias, dtype),
    )
    return out.last_hidden_state


def itm_logits(
    head: QFormerHead,
    image_tokens: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """ITM logits ``[B, 2]`` of row-paired (image, text), averaged over the head's query
    outputs, with an optional cross-attention bias ``[B, N]`` (None: the head's own pass)."""
    if bias is None:
        return head.itm_logits(image_tokens, input_ids, attention_mask)
    b, dtype = image_tokens.shape[0], head.query_tokens.dtype
    queries = head.query_tokens.expand(b, -1, -1)
    n_q = queries.shape[1]
    emb = head.embeddings(input_ids=input_ids, query_embeds=queries)
    ones = torch.ones(b, n_q, dtype=attention_mask.dtype, device=attention_mask.device)
    out = head.qformer(
        query_embeds=emb,
        query_length=n_q,
        attention_mask=torch.cat([ones, attention_mask], dim=1),
        encoder_hidden_states=image_tokens.to(dtype),
        encoder_attention_mask=_mask4d(bias, dtype),
    )
    return head.itm_average(out.last_hidden_state[:, :n_q, :])


def policy_softmax(logits: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DynamicViT's masked softmax for cross-attention, in fp32: ``logits [B, H, Q, N]``,
    ``policy [B, N]`` in {0, 1} (may carry a straight-through gradient); weights to dropped
    tokens are zeroed and rows renormalised with ``eps``. Unlike the tower's self-attention
    (:func:`~lightning_modules.components.vit_runner.masked_softmax`) there is no "attends to
    itself" term: the queries are not image tokens."""
    n = logits.shape[-1]
    keep = policy.to(torch.float32).reshape(policy.shape[0], 1, 1, n)
    logits = logits.to(torch.float32)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp() * keep
    return (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)


def _policy_forward(
    module: Blip2QFormerMultiHeadAttention,
    policy: torch.Tensor,
    hidden_states: torch.Tensor,
    attention_mask=None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask=None,
    **kwargs,
):
    """transformers' ``Blip2QFormerMultiHeadAttention`` as cross-attention, with
    :func:`policy_softmax` over the image tokens (``encoder_attention_mask`` is not used)."""
    assert encoder_hidden_states is not None  # a cross-attention is always called with the image tokens
    b, n_q, _ = hidden_states.shape
    n, hd = encoder_hidden_states.shape[1], module.attention_head_size
    q = module.query(hidden_states).view(b, n_q, -1, hd).transpose(1, 2)
    k = module.key(encoder_hidden_states).view(b, n, -1, hd).transpose(1, 2)
    v = module.value(encoder_hidden_states).view(b, n, -1, hd).transpose(1, 2)
    weights = policy_softmax(torch.matmul(q, k.transpose(-1, -2)) * module.scaling, policy)
    weights = F.dropout(weights, module.attention_dropout if module.training else 0.0).to(v.dtype)
    return torch.matmul(weights, v).transpose(1, 2).reshape(b, n_q, -1), weights


@contextlib.contextmanager
def policy_cross_attention(head: QFormerHead, policy: torch.Tensor) -> Iterator[None]:
    """Within the block, the Q-Former's cross-attention weights to image token ``j`` are
    multiplied by ``policy[:, j]`` and renormalised (DynamicViT's masked softmax, fp32), so a
    straight-through ``policy`` carries a gradient from the Q-Former to the keep decisions."""
    layers = cast("list[Blip2QFormerLayer]", list(head.qformer.encoder.layer))
    modules = [layer.crossattention.attention for layer in layers if getattr(layer, "has_cross_attention", False)]
    for m in modules:
        # an instance attribute shadows the class's forward for the block (removed below)
        m.forward = lambda *a, _m=m, **kw: _policy_forward(_m, policy, *a, **kw)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def pack(tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Tokens ``[B, N, D]`` and their bias ``[B, N]`` as one ``[B, N, D + 1]`` tensor."""
    return torch.cat([tokens, bias.to(tokens.dtype).unsqueeze(-1)], dim=-1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: ``(tokens [B, N, D], bias [B, N])``."""
    return packed[..., :-1], packed[..., -1]
