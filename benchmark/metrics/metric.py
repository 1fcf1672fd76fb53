"""A torchmetrics ``Metric`` that accumulates embeddings and computes exact retrieval metrics.

:class:`RetrievalMetric` stores *embeddings* with their global indices (never flattened
query-item pairs): gallery images and query texts arrive batch by batch, possibly on
several processes. On :meth:`~RetrievalMetric.compute` the states are gathered across
processes, de-duplicated by global index (a ``DistributedSampler`` pads the last batch with
repeated items: they must not count twice), sorted by index and checked complete; then the
model's own ``score`` ranks chunks of queries against the whole gallery through the
functional core :mod:`benchmark.metrics.retrieval` (see there for what every number means).

Directions: ``t2i`` (caption queries vs. image gallery, Sim with the caption's own image),
``i2t`` (image queries vs. caption gallery, Sim with the image's own captions), ``i2i``
(images vs. images, each image excluded from its own ranking, no Sim; or, when the
evaluation set has ``i2i_views``, separate query images -- e.g. augmented views of gallery
images -- fed as the ``"query_image"`` modality, nothing excluded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from benchmark.host_memory import release_freed_memory
from benchmark.metrics.retrieval import (
    DirectionResult,
    DirectionSpec,
    encoded_score_fn,
    evaluate_directions,
    flatten_metrics,
    source_relevance,
    transpose_relevance,
)
from benchmark.metrics.spill import SpillConfig, SpilledTable, agreed_layout, rank_and_world, sweep_stale
from datamodules.base import DIRECTIONS, Relevance
from lightning_modules.base import Encoded, max_sim

_MODALITIES = ("image", "text", "query_image")
#: the modalities (queries, gallery) each direction scores
_SIDES = {"t2i": ("text", "image"), "i2t": ("image", "text"), "i2i": ("image", "image")}


def collective_device() -> torch.device:
    """Where tensors must be for a collective of the default process group (CUDA for NCCL)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_to_host(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """torchmetrics ``dist_sync_fn``: every rank's tensor, gathered on the backend's device and
    returned in host memory (the metric keeps its states there)."""
    return [t.cpu() for t in gather_all_tensors(tensor.to(collective_device()), group)]


def sum_over_ranks(array: np.ndarray) -> np.ndarray:
    """Element-wise sum of one numpy array over all ranks (itself outside a distributed run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).to(collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def joined(parts: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """A list state as one tensor: without a copy when its parts are consecutive rows of one
    buffer (as :meth:`RetrievalMetric.update` writes them), else ``torch.cat`` (one copy)."""
    if isinstance(parts, torch.Tensor):
        return parts
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for p in parts:
        if (
            not p.is_contiguous()
            or p.untyped_storage().data_ptr() != storage
            or p.storage_offset() != offset
            or p.shape[1:] != first.shape[1:]
            or p.dtype != first.dtype
        ):
            return dim_zero_cat(list(parts))
        offset += p.numel()
    rows = sum(len(p) for p in parts)
    return torch.as_strided(first, (rows, *first.shape[1:]), first.stride(), first.storage_offset())


class EvalStructure(Protocol):
    """What the metric needs from an evaluation set (``datamodules.base.EvalSet`` honours it).

    relevance: ``"t2i"`` (queries x images), ``"i2t"`` (images x queries), ``"i2i"``
        (images x images) -- only the evaluated directions are needed.
    source: per query (caption), the index of its own image; None or negative = no Sim.
    i2i_views (optional attribute): separate ``i2i`` query images (one per row of
        ``relevance["i2i"]``); absent or None = the gallery images are the queries.
    """

    @property
    def relevance(self) -> Mapping[str, Relevance]: ...

    @property
    def source(self) -> np.ndarray | None: ...

    @property
    def n_images(self) -> int: ...

    @property
    def n_queries(self) -> int: ...


class RetrievalMetric(Metric):
    """Exact multi-direction retrieval metrics over embeddings gathered across processes.

    Args:
        eval_set: the relevance structures (see :class:`EvalStructure`).
        score_fn: ``score(queries, gallery) -> [Q, G]``, the model's own scoring
            (default: :func:`~lightning_modules.base.max_sim`).
        directions: subset of ``("t2i", "i2t", "i2i")``.
        ks: the cut-offs of R@k.
        chunk_size: queries scored at once (bounds memory to ``chunk_size x n_gallery``).
        score_variants: further named score functions over the same embeddings; each is
            evaluated too and reported as ``"{name}/{direction}/{metric}"``.
        variant_directions: per variant name, the directions in which it differs from
            ``score_fn`` (e.g. BLIP-2's ITC-only variant: t2i and i2t, where ``score_fn``
            re-ranks; image -> image has no re-ranking). In the other directions the
            variant's results are those of ``score_fn``, reused rather than recomputed.
            Absent name: every direction is scored.
        storage_dtype: floating-point states (embeddings, float extras) are stored in this
            dtype (None: as encoded). States always live in host memory; the scorer moves
            what one chunk needs to its device.
        gallery_extra: per modality, extra fields given whole rather than accumulated: tensors
            with one row per item in global-index order (e.g. the gallery's cached vision
            tokens, memory-mapped from disk). Encoded batches' fields of those names are
            dropped on update, so they are neither stored twice nor gathered across ranks.
        extra_directions: the directions in which ``score_fn`` (and the variants) read
            ``Encoded.extra`` (None: all). Extras of a modality that only serves other
            directions are dropped on update (e.g. the vision tokens of i2i query views, where
            BLIP-2 scores by ITC alone).
        spill: per-item fields (embeddings, extras) whose whole table would reach
            ``spill.min_bytes`` are written into a file in ``spill.folder`` at the items' global
            indices instead of host memory, and are not gathered (:mod:`benchmark.metrics.spill`;
            e.g. a token-reduction model's reduced ViT-g tokens, a 1M-image gallery's
            embeddings). Under DDP call :meth:`agree_spill_name` on every process before the
            first update (the evaluator does it in ``setup``).
        kwargs: passed to :class:`torchmetrics.Metric` (``process_group``...).

    Feed it with :meth:`update_images` / :meth:`update_texts` (global indices + an
    :class:`~lightning_modules.base.Encoded`). Multi-vector embeddings (``[N, T, D]``) must
    keep one ``T`` for all batches of a modality (pad and pass ``lengths``).

    Distributed: :meth:`compute` gathers the states of every rank, then each rank scores
    every ``world``-th chunk of queries (chunks of exactly the queries a single process
    scores together, so the arithmetic is the same) and the per-query results are summed
    over ranks: scoring and ITM re-ranking take about 1/N of the time on N processes.

    After :meth:`compute`, ``per_query`` holds numpy arrays for bootstrap intervals:
    ``"{direction}/rank"`` (0 = skipped), ``"{direction}/sim"`` (t2i, i2t), ``"text_lengths"``
    and ``"image_lengths"`` (-1 where the model gives none), all ordered by global index;
    ``direction_results`` the :class:`~benchmark.metrics.retrieval.DirectionResult` objects,
    and ``n_duplicates`` how many padded repeats were dropped per modality.
    """

    is_differentiable = False
    # The result mixes directions of improvement (R@k, MRR, Sim up; ranks down): see
    # benchmark.metrics.retrieval.higher_is_better(key) for each key.
    higher_is_better = None
    full_state_update = False

    image_index: list[torch.Tensor]
    image_emb: list[torch.Tensor]
    image_lengths: list[torch.Tensor]
    text_index: list[torch.Tensor]
    text_emb: list[torch.Tensor]
    text_lengths: list[torch.Tensor]

    def __init__(
        self,
        eval_set: EvalStructure,
        score_fn: Callable[[Encoded, Encoded], torch.Tensor] = max_sim,
        *,
        directions: Sequence[str] = DIRECTIONS,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
        score_variants: Mapping[str, Callable[[Encoded, Encoded], torch.Tensor]] | None = None,
        variant_directions: Mapping[str, Sequence[str]] | None = None,
        storage_dtype: torch.dtype | None = None,
        gallery_extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        extra_directions: Sequence[str] | None = None,
        spill: SpillConfig | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dist_sync_fn", gather_to_host)
        super().__init__(**kwargs)
        self.storage_dtype = storage_dtype
        self.gallery_extra = {m: dict(fields) for m, fields in (gallery_extra or {}).items()}
        directions = tuple(directions)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {directions}")
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.n_images, self.n_queries = int(eval_set.n_images), int(eval_set.n_queries)
        views = getattr(eval_set, "i2i_views", None)
        self.sides = dict(_SIDES) | ({"i2i": ("query_image", "image")} if views is not None else {})
        self.n_query_images = len(views) if views is not None else 0
        shapes = {"t2i": (self.n_queries, self.n_images), "i2t": (self.n_images, self.n_queries),
                  "i2i": (len(views) if views is not None else self.n_images, self.n_images)}  # fmt: skip
        self.relevance: dict[str, Relevance] = {}
        for d in directions:
            if d not in eval_set.relevance:
                raise ValueError(f"eval_set has no relevance for direction {d!r}")
            rel = eval_set.relevance[d]
            if (rel.n_queries, rel.n_gallery) != shapes[d]:
                raise ValueError(f"relevance[{d!r}] is {rel.n_queries} x {rel.n_gallery}, expected {shapes[d]}")
            self.relevance[d] = rel
        self.source: dict[str, Relevance] = {}
        source = getattr(eval_set, "source", None)
        if source is not None and ("t2i" in directions or "i2t" in directions):
            src = np.asarray(source, dtype=np.int64)
            if src.shape != (self.n_queries,):
                raise ValueError(f"eval_set.source must have one entry per query ({self.n_queries}), got {src.shape}")
            self.source["t2i"] = source_relevance(src, self.n_images)
            self.source["i2t"] = transpose_relevance(self.source["t2i"])
        self.score_fn = score_fn
        self.score_variants = dict(score_variants or {})
        for name in self.score_variants:
            if not name or "/" in name or name in DIRECTIONS:
                raise ValueError(f"score variant names must be non-empty, without '/', not a direction: {name!r}")
        self.variant_directions = {name: tuple(ds) for name, ds in (variant_directions or {}).items()}
        for name, ds in self.variant_directions.items():
            if name not in self.score_variants or any(d not in DIRECTIONS for d in ds):
                raise ValueError(
                    f"variant_directions[{name!r}] = {ds}: needs a score variant of that name "
                    f"and directions from {DIRECTIONS}"
                )
        self.directions = directions
        reading = directions if extra_directions is None else [d for d in directions if d in extra_directions]
        #: the modalities whose encoded extras some evaluated direction's scoring reads
        self.extra_modalities = {m for d in reading for m in self.sides[d]}
        self.ks = tuple(int(k) for k in ks)
        self.chunk_size = int(chunk_size)
        for m in _MODALITIES:
            for name in ("index", "emb", "lengths"):
                self.add_state(f"{m}_{name}", default=[], dist_reduce_fx="cat")
        self.per_query: dict[str, np.ndarray] = {}
        self.direction_results: dict[str, DirectionResult] = {}
        self.n_duplicates: dict[str, int] = {}
        self._extra_keys: dict[str, list[str]] = {m: [] for m in _MODALITIES}
        #: per modality, the items it should receive: the row capacity of its first buffer
        self._expected = {"image": self.n_images, "text": self.n_queries, "query_image": self.n_query_images}
        #: per list state of per-item tensors: (buffer, rows written) -- see :meth:`_append`
        self._state_buffers: dict[str, tuple[torch.Tensor, int]] = {}
        self.spill = spill
        self._spill_name: str | None = None
        #: whether spilled rows start on page boundaries (the processes span several machines)
        self._several_machines = False
        #: fields kept on disk, by state name ("image_emb", "image_extra_tokens"): see :meth:`_spilled_table`
        self._spilled: dict[str, SpilledTable] = {}

    def agree_spill_name(self, several_machines: bool = False) -> None:
        """Name this evaluation's spill files, the same on every process, and learn whether the
        processes span machines (``several_machines``, e.g. the trainer's ``num_nodes > 1``, or
        their host names differ); collectives under DDP: every process calls it, before the first
        update. The first process also removes the files of dead evaluations."""
        if self.spill is None:
            return
        self._spill_name, self._several_machines = agreed_layout(several_machines)
        if rank_and_world()[0] == 0:
            sweep_stale(self.spill.folder)

    # -- accumulation -------------------------------------------------------------------
    def update(self, index: torch.Tensor, enc: Encoded, modality: str) -> None:
        """Store a batch of encoded ``"image"``, ``"text"`` or ``"query_image"`` items with their global indices."""
        if modality not in _MODALITIES:
            raise ValueError(f"modality must be one of {_MODALITIES}, got {modality!r}")
        index = torch.as_tensor(index).reshape(-1).to(device=enc.emb.device, dtype=torch.long)
        if len(index) != len(enc):
            raise ValueError(f"{len(index)} indices for {len(enc)} encoded {modality}s")
        emb = enc.emb.detach()
        first = not getattr(self, f"{modality}_index")
        stored: list[torch.Tensor] = getattr(self, f"{modality}_emb")
        if stored and stored[0].shape[1:] != emb.shape[1:]:
            raise ValueError(
                f"{modality} embeddings changed shape between batches: {tuple(stored[0].shape[1:])} then "
                f"{tuple(emb.shape[1:])}; pad multi-vector embeddings to one T and pass lengths"
            )
        lengths = torch.full_like(index, -1) if enc.lengths is None else enc.lengths.detach().to(index)
        index, lengths = index.cpu(), lengths.cpu()
        given = self.gallery_extra.get(modality, {})
        kept = enc.extra if modality in self.extra_modalities else None
        extra = {k: v.detach() for k, v in (kept or {}).items() if k not in given}
        keys = self._extra_keys[modality]
        if not first and sorted(extra) != keys:
            raise ValueError(f"{modality} batches changed their extra fields: {keys} then {sorted(extra)}")
        for k in sorted(extra):
            name = f"{modality}_extra_{k}"
            table = self._spilled_table(name, extra[k], modality)
            if table is not None:
                table.write(index, extra[k])
                continue
            if name not in self._defaults:  # extra fields are named by the model: states added on first sight
                self.add_state(name, default=[], dist_reduce_fx="cat")
            self._append(name, extra[k], modality)
        self._extra_keys[modality] = sorted(extra)
        getattr(self, f"{modality}_index").append(index)
        table = self._spilled_table(f"{modality}_emb", emb, modality)
        if table is not None:
            table.write(index, emb)
        else:
            self._append(f"{modality}_emb", emb, modality)
        getattr(self, f"{modality}_lengths").append(lengths)
        del emb, extra, enc
        release_freed_memory()  # the batches just copied in: not kept mapped by the allocator

    def _spilled_table(self, name: str, batch: torch.Tensor, modality: str) -> SpilledTable | None:
        """The file-backed table of the field ``name`` when its whole table reaches
        ``spill.min_bytes`` (created on first sight, from the batch's row shape), else None (kept
        in memory). With page-aligned rows (processes on several machines) a field whose rows
        would more than double (e.g. 512-byte text embeddings) stays in memory."""
        if name in self._spilled:
            return self._spilled[name]
        if self.spill is None or getattr(self, name, None):  # a field that started in memory stays there
            return None
        rows = self._expected[modality]
        dtype = self._stored_dtype(batch)
        row_bytes = batch[0].numel() * torch.empty((), dtype=dtype).element_size()
        if rows * row_bytes < self.spill.min_bytes:
            return None
        if self._several_machines and SpilledTable.row_stride_bytes(row_bytes, aligned=True) > 2 * row_bytes:
            return None
        if self._spill_name is None:
            if rank_and_world()[1] > 1:
                raise RuntimeError(
                    "RetrievalMetric: spilling under DDP needs agree_spill_name() on every process before the first update"
                )
            self._spill_name, self._several_machines = agreed_layout()
        path = self.spill.folder / f"{self._spill_name}-{name}.bin"
        self._spilled[name] = SpilledTable(
            path, rows, tuple(batch.shape[1:]), dtype, several_machines=self._several_machines
        )
        return self._spilled[name]

    def _stored_dtype(self, t: torch.Tensor) -> torch.dtype:
        """The dtype a state tensor is kept in: floating point in the storage dtype, else its own."""
        return self.storage_dtype if self.storage_dtype is not None and t.is_floating_point() else t.dtype

    def _append(self, name: str, batch: torch.Tensor, modality: str) -> None:
        """Append a batch to the list state ``name`` as a view of rows of a preallocated host
        buffer, in arrival order and in the storage dtype (the batch is converted as it is
        copied in). The buffer has room for every item the modality should receive, so in one
        process the states are one tensor at :meth:`compute` (:func:`joined`), never
        concatenated: the gallery is held once. Under DDP a rank fills part of its buffer (the
        untouched rest is never resident) and torchmetrics concatenates the parts to gather
        them, as before. More rows than expected (padded repeats) start a new buffer twice as
        large as everything so far; :func:`joined` then concatenates once."""
        dtype = self._stored_dtype(batch)
        rows = len(batch)
        buffer, used = self._state_buffers.get(name, (None, 0))
        if buffer is None or used + rows > len(buffer) or buffer.shape[1:] != batch.shape[1:] or buffer.dtype != dtype:
            so_far = sum(len(p) for p in getattr(self, name))
            capacity = max(rows, self._expected[modality] - so_far if so_far < self._expected[modality] else so_far)
            buffer, used = torch.empty((capacity, *batch.shape[1:]), dtype=dtype), 0
        view = buffer[used : used + rows]
        view.copy_(batch)
        self._state_buffers[name] = (buffer, used + rows)
        getattr(self, name).append(view)

    def reset(self) -> None:
        """Clear the states and drop the buffers (and spilled tables) that held them."""
        super().reset()
        self._state_buffers = {}
        self._remove_spilled()
        self._spilled = {}  # the agreed name is kept: the next tables replace removed files

    def _remove_spilled(self) -> None:
        for table in self._spilled.values():
            table.remove()

    def update_images(self, index: torch.Tensor, enc: Encoded) -> None:
        self.update(index, enc, "image")

    def update_texts(self, index: torch.Tensor, enc: Encoded) -> None:
        self.update(index, enc, "text")

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate only: batch-level retrieval metrics are meaningless (no full gallery)."""
        self.update(*args, **kwargs)

    # -- computation --------------------------------------------------------------------
    def _collect(self, modality: str, n: int) -> tuple[Encoded, np.ndarray]:
        """Gathered states of one modality, de-duplicated, sorted by index, checked complete."""
        index_state = getattr(self, f"{modality}_index")
        if isinstance(index_state, list) and not index_state:
            raise RuntimeError(f"RetrievalMetric: no {modality}s were given (call update_{modality}s first)")
        index = dim_zero_cat(index_state).long()
        lengths = dim_zero_cat(getattr(self, f"{modality}_lengths")).long()
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
        first = torch.ones_like(sorted_index, dtype=torch.bool)
        first[1:] = sorted_index[1:] != sorted_index[:-1]
        keep, unique = order[first], sorted_index[first]
        self.n_duplicates[f"{modality}s"] = int(len(index) - len(unique))
        if len(unique) and (int(unique[0]) < 0 or int(unique[-1]) >= n):
            raise ValueError(f"RetrievalMetric: {modality} indices must lie in [0, {n}), got "
                             f"[{int(unique[0])}, {int(unique[-1])}]")  # fmt: skip
        if len(unique) != n:
            seen = torch.zeros(n, dtype=torch.bool, device=unique.device)
            seen[unique] = True
            missing = torch.nonzero(~seen).flatten()
            raise ValueError(
                f"RetrievalMetric: {len(missing)} of {n} {modality}s were never encoded (e.g. indices "
                f"{missing[:10].tolist()}); every {modality} must reach the metric on some process"
            )
        in_order = len(keep) == len(index) and bool(torch.equal(keep, torch.arange(len(keep), device=keep.device)))

        def kept(t: torch.Tensor) -> torch.Tensor:  # items already in index order, none repeated: no copy
            return t if in_order else t[keep]

        def field(name: str) -> torch.Tensor:
            on_disk = self._spilled.get(name)
            if on_disk is not None:  # in index order, written by every process: no gather, no sort
                on_disk.publish()
                return on_disk.table()
            return kept(joined(getattr(self, name)))

        lengths = kept(lengths)
        names = [f"{modality}_emb", *(f"{modality}_extra_{k}" for k in self._extra_keys[modality])]
        emb, *extras = [field(name) for name in names]
        extra = dict(zip(self._extra_keys[modality], extras, strict=True))
        if not in_order and self._is_synced:
            # the gathered states (torchmetrics restores this process's own after compute) are now
            # held again in index order: drop them, so a rank keeps the gallery once, not twice,
            # while it scores (under DDP the gathered order is never the index order)
            for name in names:
                if name not in self._spilled:
                    setattr(self, name, [])
        for k, table in self.gallery_extra.get(modality, {}).items():
            if len(table) != n:
                raise ValueError(
                    f"RetrievalMetric: gallery_extra[{modality!r}][{k!r}] has {len(table)} rows, expected {n}"
                )
            extra[k] = table
        has = lengths >= 0
        if bool(has.any()) and not bool(has.all()):
            raise ValueError(f"RetrievalMetric: some {modality} batches had lengths and others not")
        lengths_np = lengths.cpu().numpy()
        return Encoded(emb, lengths if bool(has.all()) else None, extra or None), lengths_np

    def compute(self) -> dict[str, float]:
        """Flat metrics ``{"t2i/R@1": ..., "i2t/MRR": ..., ...}``; fills ``per_query``."""
        counts = {"image": self.n_images, "text": self.n_queries, "query_image": self.n_query_images}
        needed = sorted({m for d in self.directions for m in self.sides[d]})
        collected = {m: self._collect(m, counts[m]) for m in needed}
        queries_gallery = {
            d: (collected[q][0], collected[g][0]) for d, (q, g) in self.sides.items() if d in self.directions
        }

        def specs(score_fn, directions: Sequence[str]) -> dict[str, DirectionSpec]:
            return {
                d: DirectionSpec(
                    score_fn=encoded_score_fn(score_fn, *queries_gallery[d]),
                    relevance=self.relevance[d],
                    source=self.source.get(d),
                    exclude_self=self.sides[d] == ("image", "image"),
                )
                for d in directions
            }

        per_query: dict[str, np.ndarray] = {}
        metrics: dict[str, float] = {}
        shard = rank_and_world()
        for name, score_fn in [("", self.score_fn), *self.score_variants.items()]:
            prefix = f"{name}/" if name else ""
            scored = [d for d in self.directions if d in self.variant_directions.get(name, self.directions)]
            with torch.no_grad():
                results = _summed_over_ranks(
                    evaluate_directions(specs(score_fn, scored), chunk_size=self.chunk_size, shard=shard)
                )
            if not name:
                self.direction_results = results
            results = {d: results[d] if d in results else self.direction_results[d] for d in self.directions}
            for d, r in results.items():
                per_query[f"{prefix}{d}/rank"] = r.rank
                if r.sim is not None:
                    per_query[f"{prefix}{d}/sim"] = r.sim
            metrics.update({f"{prefix}{k}": v for k, v in flatten_metrics(results, self.ks).items()})
        for m in needed:
            per_query[f"{m}_lengths"] = collected[m][1]
        if "image" in collected:  # what the gallery keeps per image: embeddings and the extras re-ranking reads
            images = collected["image"][0]
            stored = [images.emb, *(images.extra or {}).values()]
            metrics["index/bytes"] = int(sum(t.element_size() * t.numel() for t in stored))
            metrics["index/bytes_per_image"] = metrics["index/bytes"] / max(self.n_images, 1)
        self.per_query = per_query
        self._remove_spilled()  # every process has scored: the last collective above waited for them all
        return metrics


def _summed_over_ranks(results: dict[str, DirectionResult]) -> dict[str, DirectionResult]:
    """Each rank's share of the per-query results (zeros elsewhere) summed into the whole."""
    return {
        d: DirectionResult(
            rank=sum_over_ranks(r.rank), sim=None if r.sim is None else sum_over_ranks(r.sim), n_gallery=r.n_gallery
        )
        for d, r in results.items()
    }
