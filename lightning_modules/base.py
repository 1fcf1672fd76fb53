"""The retrieval interface every model of the suite honours, and its embedding container.

A model encodes gallery items once and queries separately, then scores a chunk of queries
against the whole encoded gallery. The evaluation code (``benchmark/``) only ever talks to
this :class:`RetrievalModel` protocol, so CLIP, BLIP2, BLIP2-IDQ-Former and the token
reduction baselines are evaluated by one code path.

Embeddings may be single-vector (``[N, D]``) or multi-vector (``[N, T, D]``, e.g. the 32
Q-Former query outputs of BLIP-2); ``lengths`` carries a per-item number of valid vectors
where the model has one (the dynamic query length L of IDQ-Former), and is what the suite
reports as "query length".

``extra`` carries per-item tensors a model needs beyond the embeddings to score a pair
(e.g. BLIP-2's text token ids for ITM re-ranking, or the gallery's frozen vision tokens):
each tensor has the items on its first axis and is sliced, concatenated, moved and
gathered across processes together with ``emb``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@dataclass
class Encoded:
    """Encoded items: ``emb`` is ``[N, D]`` or ``[N, T, D]``; ``lengths`` is ``[N]`` or None;
    ``extra`` maps names to ``[N, ...]`` tensors (or is None)."""

    emb: torch.Tensor
    lengths: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.emb.ndim not in (2, 3):
            raise ValueError(f"Encoded.emb must be [N, D] or [N, T, D], got shape {tuple(self.emb.shape)}")
        if self.lengths is not None and self.lengths.shape != (self.emb.shape[0],):
            raise ValueError("Encoded.lengths must have shape [N]")
        for name, t in (self.extra or {}).items():
            if t.ndim < 1 or t.shape[0] != self.emb.shape[0]:
                raise ValueError(
                    f"Encoded.extra[{name!r}] must have the {self.emb.shape[0]} items on its first axis, "
                    f"got shape {tuple(t.shape)}"
                )

    def __len__(self) -> int:
        return self.emb.shape[0]

    def _map(self, fn) -> Encoded:
        extra = None if self.extra is None else {k: fn(v) for k, v in self.extra.items()}
        return Encoded(fn(self.emb), None if self.lengths is None else fn(self.lengths), extra)

    def __getitem__(self, idx: slice | torch.Tensor) -> Encoded:
        """Items ``idx`` of every field; a tensor index follows each field to its device."""
        if isinstance(idx, torch.Tensor):
            return self._map(lambda t: t[idx.to(t.device)])
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device | str) -> Encoded:
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(parts: Sequence[Encoded]) -> Encoded:
        lengths = None if parts[0].lengths is None else torch.cat([p.lengths for p in parts])  # type: ignore[misc]
        extra = None
        if parts[0].extra is not None:
            extra = {k: torch.cat([p.extra[k] for p in parts]) for k in parts[0].extra}  # type: ignore[index]
        return Encoded(torch.cat([p.emb for p in parts]), lengths, extra)


@runtime_checkable
class RetrievalModel(Protocol):
    """What the evaluation needs from a model.

    * ``image_transform()`` -- the model's own preprocessing, PIL image -> ``[3, H, W]``.
    * ``encode_images(pixels)`` -- gallery (or image-query) embeddings.
    * ``encode_texts(texts)`` -- query (or caption-gallery) embeddings; ``lengths`` set
      when the model allots a per-query number of vectors.
    * ``score(queries, gallery)`` -- a ``[Q, G]`` similarity matrix for one chunk of
      queries against the whole gallery, in the model's own scoring (higher = better).
      The evaluation calls it chunk by chunk, so memory stays bounded.

    Optional: ``score_variants()`` -> ``{name: score_fn}``, further scorings of the same
    embeddings (e.g. BLIP-2's ITC-only score beside its ITM re-ranked one); the evaluation
    reports each under ``"{name}/{direction}/{metric}"`` beside the main keys; and
    ``score_variant_directions`` -> ``{name: directions}``, where a variant differs from
    ``score`` (elsewhere the evaluation reuses the main results instead of rescoring).
    """

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]: ...

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded: ...

    def encode_texts(self, texts: Sequence[str]) -> Encoded: ...

    def score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor: ...


def max_sim(queries: Encoded, gallery: Encoded) -> torch.Tensor:
    """Late-interaction similarity: the max over all (query vector, gallery vector) pairs.

    Single-vector inputs reduce to the plain dot product. Where ``lengths`` are given,
    only the first ``lengths[i]`` vectors of item ``i`` take part. One matrix product of
    every query vector with every gallery vector, ``[Q T, G S]``, viewed ``[Q, T, G, S]``
    and reduced over ``S`` (contiguous) and then ``T``: about twice as fast on CPU as an
    einsum into ``[Q, G, T, S]``, which must be permuted before it is reduced.
    """
    q, g = queries.emb, gallery.emb
    if q.ndim == 2 and g.ndim == 2:
        return q @ g.T
    q3 = q if q.ndim == 3 else q[:, None]
    g3 = g if g.ndim == 3 else g[:, None]
    (n_q, t, d), (n_g, s) = q3.shape, g3.shape[:2]
    sims = (q3.reshape(n_q * t, d) @ g3.reshape(n_g * s, d).T).view(n_q, t, n_g, s)
    neg = torch.finfo(sims.dtype).min
    if queries.lengths is not None and q.ndim == 3:
        valid = torch.arange(t, device=q.device)[None] < queries.lengths.to(q.device)[:, None]
        sims = sims.masked_fill(~valid[:, :, None, None], neg)
    if gallery.lengths is not None and g.ndim == 3:
        valid = torch.arange(s, device=g.device)[None] < gallery.lengths.to(g.device)[:, None]
        sims = sims.masked_fill(~valid[None, None], neg)
    return sims.amax(-1).amax(1)


#: gallery items moved to the scoring device at once: device memory for first-stage scores
#: depends on this and on the query chunk, not on the gallery's size (a gallery that fits one
#: block is scored exactly as a whole)
GALLERY_BLOCK = 16384


def on_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; half-precision floats (a gallery stored in fp16) widened to float32
    there: moved first, then widened, since a blocking ``to(device, float32)`` converts on the
    host and copies twice the bytes (exact either way)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.to(device).float()
    return t.to(device)


def scoring_view(items: Encoded, device: torch.device | str) -> Encoded:
    """Embeddings and lengths of ``items`` on ``device`` in float32 (extras are left out)."""
    return Encoded(on_device(items.emb, device), None if items.lengths is None else items.lengths.to(device))


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Autocast off: first-stage similarities are computed in float32 even in a bf16/fp16
    evaluation (half-precision scores would tie near the top, and ties count against the model)."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def blockwise_over_gallery(
    score: Callable[[Encoded, Encoded], torch.Tensor],
    queries: Encoded,
    gallery: Encoded,
    device: torch.device | str,
    block: int = GALLERY_BLOCK,
) -> torch.Tensor:
    """``score`` of the queries against the gallery, the gallery moved to ``device`` (float32)
    ``block`` items at a time; each block's scores are written into one ``[Q, G]`` result
    (the same values as concatenating the blocks, without holding the blocks and their
    concatenation at once). Only one block of the gallery is ever widened to float32."""
    q = scoring_view(queries, device)
    if len(gallery) <= block:
        return score(q, scoring_view(gallery, device))
    out: torch.Tensor | None = None
    for s in range(0, len(gallery), block):
        part = score(q, scoring_view(gallery[s : s + block], device))
        if out is None:
            out = part.new_empty((part.shape[0], len(gallery)))
        out[:, s : s + part.shape[1]] = part
        del part
    assert out is not None
    return out
