"""The model's own scores, through the RetrievalModel protocol, for the feedback loop.

:class:`GalleryScorer` holds the gallery encoded once (:class:`~lightning_modules.base.Encoded`)
and scores against it: query encodings or new texts (``encode_texts`` then the model's
``score``, or one of its ``score_variants()``), and gallery images against the gallery
(the model's own image-image score, e.g. cosine for CLIP, ITC late interaction for the
BLIP2 family). Image-image rows are computed on first use and cached, so PS/NS similarities
cost at most one pass over the gallery whatever the number of rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lightning_modules.base import Encoded, RetrievalModel

ScoreFn = Callable[[Encoded, Encoded], torch.Tensor]


def score_function(model: RetrievalModel, variant: str | None) -> ScoreFn:
    """``model.score`` or the named entry of ``model.score_variants()``."""
    if variant is None:
        return model.score
    variants = model.score_variants() if hasattr(model, "score_variants") else {}
    if variant not in variants:
        from benchmark.config import ConfigError

        raise ConfigError(f"feedback.score_variant: the model has no score variant {variant!r} "
                          f"(it has: {', '.join(sorted(variants)) or 'none'})")
    return variants[variant]


class GalleryScorer:
    """Scores against one encoded gallery; results are float32 on the CPU."""

    def __init__(self, model: RetrievalModel, gallery: Encoded, score_fn: ScoreFn, *, batch_size: int = 256) -> None:
        self.model = model
        self.gallery = gallery
        self.score_fn = score_fn
        self.batch_size = batch_size
        n = len(gallery)
        self._image_rows = torch.zeros(0)
        self._have = torch.zeros(n, dtype=torch.bool)
        self.n_gallery = n

    @torch.no_grad()
    def scores(self, queries: Encoded) -> torch.Tensor:
        """``[len(queries), G]`` scores of encoded queries."""
        parts = [self.score_fn(queries[s:s + self.batch_size], self.gallery).float().cpu()
                 for s in range(0, len(queries), self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.n_gallery)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        parts = [self.model.encode_texts(list(texts[s:s + self.batch_size]))
                 for s in range(0, len(texts), self.batch_size)]
        return Encoded.cat(parts)

    def text_scores(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), G]`` scores of new query texts (e.g. refined queries)."""
        if not texts:
            return torch.zeros(0, self.n_gallery)
        return self.scores(self.encode_texts(texts))

    @torch.no_grad()
    def image_rows(self, index: torch.Tensor) -> torch.Tensor:
        """``[len(index), G]`` image-image scores of gallery items ``index`` against the gallery."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if self._image_rows.numel() == 0:
            self._image_rows = torch.zeros(self.n_gallery, self.n_gallery)
        missing = torch.unique(index[~self._have[index]])
        for s in range(0, len(missing), self.batch_size):
            rows = missing[s:s + self.batch_size]
            self._image_rows[rows] = self.score_fn(self.gallery[rows.to(self.gallery.emb.device)],
                                                   self.gallery).float().cpu()
            self._have[rows] = True
        return self._image_rows[index]

    @property
    def n_image_rows(self) -> int:
        """How many gallery items' image-image rows were computed."""
        return int(self._have.sum())
