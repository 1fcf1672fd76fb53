"""Retrieval evaluation of any :class:`~lightning_modules.base.RetrievalModel` with Lightning.

:class:`RetrievalEvaluator` wraps a model for ``Trainer.test``: the gallery images and the
query texts come as two test dataloaders, each item with its global index; embeddings are
accumulated in a :class:`~benchmark.metrics.RetrievalMetric` (host memory, in the run's
storage dtype), which gathers them across processes (DDP), drops the duplicates that
distributed samplers pad with, and scores the queries against the gallery in chunks with
the model's own ``score`` (and with each of its optional ``score_variants()``, reported
under ``"{variant}/{direction}/{metric}"``), each rank scoring its share of the chunks.
Encoding runs in ``test_step`` and scoring in ``on_test_epoch_end``, both on the Trainer's
device and under its precision (``eval.precision``). ``gallery_extra`` gives per-image fields
whole (e.g. the cached vision tokens that re-ranking reads, memory-mapped), instead of
accumulating and gathering them; ``spill`` keeps the large per-item tables that do arrive with
the batches (a large gallery's embeddings, a token-reduction model's reduced tokens) in files
instead of host memory (:mod:`benchmark.metrics.spill`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch

from benchmark.config import EvalConfig
from benchmark.metrics import RetrievalMetric
from benchmark.metrics.spill import SpillConfig
from datamodules.base import EvalSet
from lightning_modules.base import RetrievalModel
from lightning_modules.contract import ExtraDirections, ScoreVariants


class RetrievalEvaluator(L.LightningModule):
    """``modalities``: what each test dataloader serves, in order (``"image"``: the gallery,
    ``"text"``: the query instructions, ``"query_image"``: separate image queries of ``i2i``,
    e.g. augmented views; see :class:`~benchmark.metrics.RetrievalMetric`)."""

    def __init__(
        self,
        model: RetrievalModel,
        eval_set: EvalSet,
        config: EvalConfig,
        modalities: tuple[str, ...] = ("image", "text"),
        *,
        directions: Sequence[str] | None = None,
        storage_dtype: torch.dtype | None = None,
        gallery_extra: Mapping[str, torch.Tensor] | None = None,
        spill: SpillConfig | None = None,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        #: the requested directions the split defines no relevance in (set by the retrieval task)
        self.skipped_directions: tuple[str, ...] = ()
        if not isinstance(model, RetrievalModel):
            raise TypeError(f"{type(model).__name__} does not honour the RetrievalModel protocol")
        self.model = model
        self.eval_set = eval_set
        self.metric = RetrievalMetric(
            eval_set,
            score_fn=model.score,
            directions=tuple(directions) if directions is not None else config.directions,
            ks=config.ks,
            chunk_size=config.chunk_size,
            score_variants=model.score_variants() if isinstance(model, ScoreVariants) else None,
            variant_directions=model.score_variant_directions if isinstance(model, ScoreVariants) else None,
            storage_dtype=storage_dtype,
            gallery_extra={"image": dict(gallery_extra)} if gallery_extra else None,
            extra_directions=model.extra_directions if isinstance(model, ExtraDirections) else None,
            spill=spill,
        )
        self.results: dict[str, float] = {}
        self.per_query: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {f"encode_{m}s_s": 0.0 for m in self.modalities}

    def setup(self, stage: str) -> None:
        # every process, once the process group is up
        self.metric.agree_spill_name(several_machines=self.trainer.num_nodes > 1)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        index, items = batch
        start = time.perf_counter()
        modality = self.modalities[dataloader_idx]
        encode = self.model.encode_texts if modality == "text" else self.model.encode_images
        self.metric.update(index, encode(items), modality)
        self.timings[f"encode_{modality}s_s"] += time.perf_counter() - start

    def _similarity_from_variant(self) -> None:
        """Sim of a re-ranking model comes from its first-stage similarity (its
        ``similarity_variant``, e.g. ``"itc"``): a re-rank score (ITM logit + ITC) is not a
        similarity. The re-ranked score still decides every rank-based metric."""
        variant = self.model.similarity_variant if isinstance(self.model, ScoreVariants) else None
        if not variant:
            return
        for key in [k for k in self.results if k.endswith("/Sim") and not k.startswith(f"{variant}/")]:
            self.results[key] = self.results[f"{variant}/{key}"]
        for key in [k for k in self.per_query if k.endswith("/sim") and not k.startswith(f"{variant}/")]:
            self.per_query[key] = self.per_query[f"{variant}/{key}"]

    def on_test_epoch_end(self) -> None:
        start = time.perf_counter()
        with self.trainer.precision_plugin.forward_context():  # scoring and re-ranking under the run's precision
            self.results = {k: float(v) for k, v in self.metric.compute().items()}
        self.timings["score_and_rank_s"] = time.perf_counter() - start
        self.per_query = dict(self.metric.per_query)
        self._similarity_from_variant()
        self.metric.reset()
        headline = {k: v for k, v in self.results.items() if k.split("/")[-1] in ("R@1", "R@5", "R@10", "MRR")}
        self.log_dict({f"test/{k}": torch.tensor(v) for k, v in headline.items()}, rank_zero_only=True)
