"""The model's own scores, through the RetrievalModel protocol, for the feedback loop.

:class:`GalleryScorer` holds the gallery encoded once (:class:`~lightning_modules.base.Encoded`)
and scores against it: query encodings or new texts (``encode_texts`` then the model's
``score``, or one of its ``score_variants()``), and gallery images against the gallery
(the model's own image-image score, e.g. cosine for CLIP, ITC late interaction for the
BLIP2 family).

The gallery x gallery matrix is never formed. Image-image rows are scored ``row_chunk`` at
a time against the whole gallery, only for items that are shown, and kept in the form the
refresh kernel reads (:mod:`benchmark.feedback.kernels`):

* :meth:`GalleryScorer.neighbours` -- the lazily filled top-k table
  (:mod:`benchmark.feedback.neighbours`), each row scored once: ``O(G x k)`` memory;
* :meth:`GalleryScorer.image_rows` -- whole rows of the items shown this round, from a
  bounded cache (:mod:`benchmark.feedback.rowcache`) or scored on demand.

:class:`ShownSimilarity` hands a round's shown items to a kernel through these two.
Every row is one call of the model's score on the same inputs as the dense code made (the
same distinct missing items, ascending, in batches of ``row_chunk``), so the values are
the dense code's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from benchmark.config import ConfigError
from benchmark.feedback.neighbours import NeighbourTable
from benchmark.feedback.rowcache import RowCache
from lightning_modules.base import Encoded, RetrievalModel
from lightning_modules.contract import ScoreVariants

ScoreFn = Callable[[Encoded, Encoded], torch.Tensor]


def score_function(model: RetrievalModel, variant: str | None) -> ScoreFn:
    """``model.score`` or the named entry of ``model.score_variants()``."""
    if variant is None:
        return model.score
    variants = model.score_variants() if isinstance(model, ScoreVariants) else {}
    if variant not in variants:
        raise ConfigError(
            f"feedback.score_variant: the model has no score variant {variant!r} "
            f"(it has: {', '.join(sorted(variants)) or 'none'})"
        )
    return variants[variant]


class GalleryScorer:
    """Scores against one encoded gallery; results are float32 on the CPU.

    batch_size: queries (or texts) scored per call. row_chunk: gallery items scored against
    the gallery per image-image pass (None = ``batch_size``). top_k: neighbours kept per item
    by the table (None = the m of the first :meth:`neighbours` call). row_cache_mb: budget of
    the cache of whole image-image rows.
    """

    def __init__(
        self,
        model: RetrievalModel | None,
        gallery: Encoded,
        score_fn: ScoreFn,
        *,
        batch_size: int = 256,
        row_chunk: int | None = None,
        top_k: int | None = None,
        row_cache_mb: float = 1024.0,
    ) -> None:
        self.model = model
        self.gallery = gallery
        self.score_fn = score_fn
        self.batch_size = batch_size
        self.row_chunk = row_chunk or batch_size
        self.top_k = top_k
        self.n_gallery = len(gallery)
        self.table: NeighbourTable | None = None
        self.row_cache = RowCache(self.n_gallery, row_cache_mb)
        self.n_image_rows = 0  # image-image rows scored against the gallery (a recomputed row counts again)

    @torch.no_grad()
    def scores(self, queries: Encoded) -> torch.Tensor:
        """``[len(queries), G]`` scores of encoded queries."""
        parts = [
            self.score_fn(queries[s : s + self.batch_size], self.gallery).float().cpu()
            for s in range(0, len(queries), self.batch_size)
        ]
        return torch.cat(parts) if parts else torch.zeros(0, self.n_gallery)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        if self.model is None:
            raise ValueError("this GalleryScorer has no model: it scores given encodings only")
        model = self.model
        parts = [
            model.encode_texts(list(texts[s : s + self.batch_size])) for s in range(0, len(texts), self.batch_size)
        ]
        return Encoded.cat(parts)

    def text_scores(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), G]`` scores of new query texts (e.g. refined queries)."""
        if not texts:
            return torch.zeros(0, self.n_gallery)
        return self.scores(self.encode_texts(texts))

    @torch.no_grad()
    def _score_rows(self, items: torch.Tensor):
        """``(items of the chunk, [chunk, G] float32 rows on the model's device)`` per chunk of
        ``row_chunk`` items, each scored against the whole gallery."""
        for s in range(0, len(items), self.row_chunk):
            part = items[s : s + self.row_chunk]
            self.n_image_rows += len(part)
            yield part, self.score_fn(self.gallery[part.to(self.gallery.emb.device)], self.gallery).float()

    def image_rows(self, index: torch.Tensor) -> torch.Tensor:
        """``[len(index), G]`` image-image scores of gallery items ``index`` against the gallery
        (cached rows reused, the others scored now)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        uniq, inverse = torch.unique(index, return_inverse=True)
        cached = self.row_cache.contains(uniq)
        rows = torch.empty(len(uniq), self.n_gallery)
        rows[cached] = self.row_cache.get(uniq[cached])
        todo = (~cached).nonzero().reshape(-1)
        done = 0
        for items, part in self._score_rows(uniq[todo]):
            part = part.cpu()
            rows[todo[done : done + len(items)]] = part
            self.row_cache.put(items, part)
            done += len(items)
        return rows[inverse]

    def neighbours(self, index: torch.Tensor, m: int) -> torch.Tensor:
        """``[len(index), m]`` gallery indices of the m largest image-image scores of each item
        of ``index`` (its own row's ``topk``), from the top-k table, filled as needed."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if self.table is None:
            self.table = NeighbourTable(self.n_gallery, min(self.top_k or m, self.n_gallery))
        for items, part in self._score_rows(self.table.missing(index)):
            self.table.fill(items, part)
        return self.table.neighbours(index, m)

    def neighbour_table(self, k: int | None = None) -> NeighbourTable:
        """The whole top-k table (every row filled now, ``row_chunk`` rows at a time)."""
        self.neighbours(torch.arange(self.n_gallery), min(k or self.top_k or 1, self.n_gallery))
        assert self.table is not None
        return self.table

    def shown(self, shown: torch.Tensor) -> ShownSimilarity:
        """The similarities of a round's shown items ``[c, d]``, for a refresh kernel."""
        return ShownSimilarity(self, shown)


class ShownSimilarity:
    """A :class:`~benchmark.feedback.kernels.Shown` backed by a :class:`GalleryScorer`: the
    rows or the neighbour indices of ``shown[c, d]``, each computed once per round."""

    def __init__(self, scorer: GalleryScorer, shown: torch.Tensor) -> None:
        self.scorer, self.shown = scorer, shown
        self.n_gallery = scorer.n_gallery
        self._rows: torch.Tensor | None = None
        self._neighbours: dict[int, torch.Tensor] = {}

    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = self.scorer.image_rows(self.shown.reshape(-1)).view(*self.shown.shape, -1)
        return self._rows

    def neighbours(self, m: int) -> torch.Tensor:
        if m not in self._neighbours:
            self._neighbours[m] = self.scorer.neighbours(self.shown.reshape(-1), m).view(*self.shown.shape, m)
        return self._neighbours[m]
