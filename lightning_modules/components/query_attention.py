"""Self-attention masks for the IDQ-Former Q-Former: nested (prefix-consistent) query attention.

BLIP2-IDQ-Former (InstructSee, Sensors 2025, Algorithm 1) gives each instruction its own
number of queries L. With BLIP-2's full query self-attention the first k outputs of a
32-query pass differ from a k-query pass, so a gallery would have to be encoded once per L.
**Nested query attention** fixes that: in every Q-Former self-attention layer query ``i``
attends only to queries ``j <= i`` (cross-attention to the image and the feed-forward are
per token anyway). The output of query ``i`` then depends on queries ``0..i`` only, so one
pass over the gallery with ``L_max`` queries gives, for every L, exactly the outputs of an
L-query pass: text ``q`` is scored against the first ``L_q`` outputs of each image.

The masks are additive float masks ``[B or 1, 1, S, S]`` (0 = attend, dtype min = blocked)
for transformers' ``Blip2QFormerModel``: its ``create_bidirectional_mask`` returns a 4-D mask
as is (checked for transformers 5.x, eager and sdpa attention; flex attention would need a
``BlockMask`` and is not supported). ``tests/test_idq_components.py`` checks that the
all-allowed 4-D mask reproduces transformers' own forward with a 2-D padding mask, so a
change of that behaviour in a future transformers release is caught.

Sequence layout (as ``Blip2TextEmbeddings(input_ids, query_embeds=...)`` builds it): the
``n`` query tokens first, then ``T`` instruction/text tokens. ``allowed[i, j]`` = token ``i``
may attend to token ``j``:

============================  =========================================================
row (attending) \\ column      rule
============================  =========================================================
query i -> query j            ``j < L_b`` and (``nested``: ``j <= i``; ``full``: any j)
query i -> text token t       ``queries_see_text`` and ``t`` is not padding
text token -> query j         ``text_sees_queries`` and ``j < L_b``
text token -> text token t    ``t`` is not padding
============================  =========================================================

``L_b`` is ``lengths[b]`` when given (per sample), else ``n``. Queries ``>= L_b`` are hidden
from every other token, so their own outputs are meaningless but the outputs of the first
``L_b`` queries and of the text are exactly those of a pass with ``L_b`` queries: one
batched ``L_max`` pass serves samples of different L (in ``full`` mode as well).

The instruction-conditioned path (3.3 of the paper; InstructBLIP feeds the instruction into
the Q-Former self-attention) uses ``queries_see_text=True``: the queries read the
instruction, so what they take from the image depends on it. With the default
``text_sees_queries=True`` (InstructBLIP style: instruction tokens read the queries too), a
query's output also depends on L through the instruction tokens, so prefix consistency
across L is lost in that path, but the per-sample ``lengths`` equality above still holds;
``text_sees_queries=False`` restores prefix consistency. The queries-only gallery path
(no text) is always prefix consistent in ``nested`` mode.
"""

from __future__ import annotations

from typing import Literal

import torch

AttentionMode = Literal["nested", "full"]
ATTENTION_MODES: tuple[str, ...] = ("nested", "full")


def query_allowed(
    num_queries: int,
    *,
    mode: AttentionMode = "nested",
    text_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    queries_see_text: bool = True,
    text_sees_queries: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``[B or 1, S, S]`` matrix, ``True`` where token ``i`` may attend to token ``j``.

    ``text_mask`` (``[B, T]``, 1 = token, 0 = padding) appends ``T`` text tokens after the
    queries; ``lengths`` (``[B]``, ints in ``1..num_queries``) hides queries ``>= lengths[b]``.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    if num_queries < 1:
        raise ValueError("num_queries must be >= 1")
    if device is None:
        device = text_mask.device if text_mask is not None else lengths.device if lengths is not None else "cpu"
    n = num_queries
    idx = torch.arange(n, device=device)
    qq = idx[None, :] <= idx[:, None] if mode == "nested" else torch.ones(n, n, dtype=torch.bool, device=device)
    qq = qq[None]  # [1, n, n]
    if lengths is not None:
        lengths = lengths.to(device)
        if lengths.ndim != 1 or bool((lengths < 1).any()) or bool((lengths > n).any()):
            raise ValueError(f"lengths must be a [B] tensor with values in 1..{n}")
        visible_q = idx[None, :] < lengths[:, None]  # [B, n]  (keys)
        qq = qq & visible_q[:, None, :]
    else:
        visible_q = torch.ones(1, n, dtype=torch.bool, device=device)
    if text_mask is None:
        return qq
    tok = text_mask.to(device).bool()  # [B, T]
    b = max(tok.shape[0], qq.shape[0])
    t = tok.shape[1]
    qq = qq.expand(b, n, n)
    qt = (tok if queries_see_text else torch.zeros_like(tok))[:, None, :].expand(b, n, t)
    tq = (visible_q if text_sees_queries else torch.zeros_like(visible_q))[:, None, :].expand(b, t, n)
    tt = tok[:, None, :].expand(b, t, t)
    return torch.cat([torch.cat([qq, qt], dim=2), torch.cat([tq, tt], dim=2)], dim=1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, S, S]`` boolean -> ``[B, 1, S, S]`` additive mask (0 or the dtype's minimum)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)[:, None]


def query_attention_mask(
    num_queries: int,
    *,
    mode: AttentionMode = "nested",
    text_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    queries_see_text: bool = True,
    text_sees_queries: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The 4-D additive self-attention mask for ``Blip2QFormerModel(attention_mask=...)``.

    Pass it together with ``query_length=num_queries``; see the module docstring for the
    rules. Returns ``[B or 1, 1, S, S]`` with ``S = num_queries (+ T)``.
    """
    allowed = query_allowed(
        num_queries,
        mode=mode,
        text_mask=text_mask,
        lengths=lengths,
        queries_see_text=queries_see_text,
        text_sees_queries=text_sees_queries,
        device=device,
    )
    return additive_mask(allowed, dtype)


def qformer_query_forward(
    qformer,
    query_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    *,
    mode: AttentionMode = "nested",
    text_embeds: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    queries_see_text: bool = True,
    text_sees_queries: bool = True,
    image_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run a transformers ``Blip2QFormerModel`` over queries (and optionally text) with the mask.

    ``query_embeds`` ``[B or 1, n, H]`` (token bank output, positions included),
    ``image_embeds`` ``[B, P, H_vision]``, ``text_embeds`` ``[B, T, H]`` (already through
    ``Blip2TextEmbeddings``) with ``text_mask`` ``[B, T]``; ``image_mask`` ``[B, P]`` (1 = keep)
    for padded image tokens, passed to the cross-attention unchanged. Returns the last hidden state
    ``[B, n (+ T), H]``; the first ``n`` rows are the query outputs.
    """
    batch = image_embeds.shape[0]
    n = query_embeds.shape[1]
    hidden = query_embeds.expand(batch, -1, -1)
    if text_embeds is not None:
        if text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.long, device=text_embeds.device)
        hidden = torch.cat([hidden, text_embeds.to(hidden.dtype)], dim=1)
    mask = query_attention_mask(
        n,
        mode=mode,
        text_mask=text_mask if text_embeds is not None else None,
        lengths=lengths,
        queries_see_text=queries_see_text,
        text_sees_queries=text_sees_queries,
        dtype=qformer.layernorm.weight.dtype,
        device=hidden.device,
    )
    out = qformer(
        query_embeds=hidden,
        query_length=n,
        attention_mask=mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
        return_dict=True,
    )
    return out.last_hidden_state
