"""Peak memory of the feedback image-image path on a large random gallery (not timed).

:func:`probe` runs in a fresh process (:func:`benchmark.measure.memory.peak_rss_mb_in_fresh_process`,
the process's ``VmHWM``) on ``n_gallery`` random unit vectors of ``dim`` dimensions scored
by cosine (``lightning_modules.base.max_sim``, CLIP's image-image score):

* ``step="none"`` -- nothing more than the baseline: imports and the gallery;
* ``step="table"`` -- the whole top-k neighbour table, ``row_chunk`` rows at a time (what
  the ``knn`` kernel reads, here for every item instead of only the shown ones);
* ``step="rows"`` -- one refresh round of ``n_queries`` queries showing ``display`` items
  each with the ``mean`` kernel (whole rows of the shown items, no row cache).

:func:`bound_mb` is the extra peak each step is allowed over the baseline; it grows like
``row_chunk x G`` (and ``n_queries x display x G`` for ``rows``) plus ``G x k``, while the
dense path allocated ``G x G`` float32 at the first refresh (``dense_mb``). The baseline is
read in the same process just before the step (``VmHWM`` after the imports, a warm-up run of
the step on a tiny gallery, which maps its operators' code pages, and the gallery) and written
to ``out``, so one process gives both figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import RefreshConfig
from benchmark.feedback.similarity import GalleryScorer
from lightning_modules.base import Encoded, max_sim

STEPS = ("none", "table", "rows")
#: allocator and interpreter slack allowed on top of the counted buffers
SLACK_MB = 64.0


def vm_hwm_mb() -> float:
    """This process's peak resident set size so far (``VmHWM``), in MiB."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024


def dense_mb(n_gallery: int) -> float:
    """The old dense matrix: ``G x G`` float32."""
    return 4.0 * n_gallery * n_gallery / 2**20


def bound_mb(step: str, n_gallery: int, top_k: int, row_chunk: int, n_queries: int = 0, display: int = 0) -> float:
    """The extra peak allowed for ``step`` over the baseline.

    table: a ``[row_chunk, G]`` float32 score block, counted 3 times (the block, ``topk``'s
    working copy, one more in flight) + the ``[G, k]`` table (int64 + float32).
    rows: the ``[u, G]`` scored rows (u <= n_queries x display) and the ``[n_queries, display, G]``
    gathered rows, counted 4 times with the kernel's temporaries, + a score block."""
    block = 4.0 * row_chunk * n_gallery
    if step == "none":
        return SLACK_MB
    if step == "table":
        return (3 * block + 12.0 * n_gallery * top_k) / 2**20 + SLACK_MB
    if step == "rows":
        return (4 * 4.0 * n_queries * display * n_gallery + block) / 2**20 + SLACK_MB
    raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")


def _inputs(n_gallery: int, dim: int, top_k: int, row_chunk: int, n_queries: int, display: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    gallery = Encoded(F.normalize(torch.randn(n_gallery, dim, generator=g), dim=-1))
    scorer = GalleryScorer(
        None,  # no model: scores only
        gallery,
        max_sim,
        row_chunk=row_chunk,
        top_k=top_k,
        row_cache_mb=0.0,
    )
    shown = torch.randint(0, n_gallery, (n_queries, display), generator=g)
    prev = torch.randn(n_queries, n_gallery, generator=g)
    ps = torch.rand(n_queries, display, generator=g) < 0.3
    return scorer, shown, prev, ps


def _run(step: str, top_k: int, scorer: GalleryScorer, shown, prev, ps) -> None:
    if step == "table":
        table = scorer.neighbour_table(top_k)
        assert bool(table.have.all()) and table.indices.shape == (len(scorer.gallery), top_k)
    elif step == "rows":
        refreshed_scores = refreshed(prev, scorer.shown(shown), ps, RefreshConfig(kernel="mean"))
        assert refreshed_scores.shape == (len(prev), len(scorer.gallery))


def probe(
    step: str,
    n_gallery: int,
    dim: int = 64,
    top_k: int = 16,
    row_chunk: int = 256,
    n_queries: int = 64,
    display: int = 5,
    threads: int = 1,
    seed: int = 0,
    out: str | None = None,
) -> None:
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
    torch.set_num_threads(threads)
    # the step once on a tiny gallery first: the code pages of its operators are then mapped before
    # the baseline (else they count as the step's memory, by an amount that depends on the page cache)
    _run(step, top_k, *_inputs(4 * top_k, dim, top_k, row_chunk, 2, display, seed))
    inputs = _inputs(n_gallery, dim, top_k, row_chunk, n_queries, display, seed)
    if out is not None:
        Path(out).write_text(json.dumps({"baseline_mb": vm_hwm_mb()}))
    _run(step, top_k, *inputs)
