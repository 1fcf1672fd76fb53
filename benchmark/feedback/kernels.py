"""How score refreshing turns the shown items' image-image similarities into one row per query.

Input: the shown items' similarities, read through a :class:`Shown` source (their rows
``sims[c, d, G]``: similarity of each of the d shown items to every gallery item under the
model's own image-image score, or only the indices of each row's m largest entries), and
``mask[c, d]`` (the items of the set being aggregated: the PS or the NS of the round).
Output: ``[c, G]``, 0 where the set is empty. Each kernel declares what it reads
(``reads``), so the gallery x gallery matrix is never formed
(:mod:`benchmark.feedback.similarity`): ``rows`` (``mean``, ``max``, ``residual``: every
entry of the shown items' rows, scored on demand) or ``neighbours`` (``knn``: the indices
of the m = ``refresh.neighbours`` largest entries of each shown row and nothing else, read
from the top-k neighbour table). A registry (``refresh.kernel``), each entry with the unit
of what it returns:

* ``mean`` (unit: similarity) -- ``mean_{n in set} sim(g, n)``: a global kernel; every
  gallery item moves by how much it resembles the set on average.
* ``max`` (unit: similarity) -- ``max_{n in set} sim(g, n)``: the nearest member only.
* ``knn`` (unit: share) -- ``mean_{n in set} 1[g in NN_m(n)]``, ``NN_m(n)`` the ``m =
  refresh.neighbours`` gallery items most similar to n (n itself included): a local kernel
  that moves only the near-duplicates of a marked item and leaves the rest of the ranking
  alone.
* ``residual`` (unit: similarity) -- the mean over the set of each member's similarity row
  after the part explained by the query's current scores is regressed out (rows
  standardised over the gallery, least squares): only what a marked item shares with g
  *beyond* what the query itself rewards moves g (a shown NS ranked high for the query, so
  much of its resemblance to other items is resemblance to the query).

Units decide how :func:`benchmark.feedback.arms.refreshed` scales a term under
``refresh.scale = std``: a similarity row is rescaled to the spread of the query's current
scores; a share is multiplied by that spread (w_ns = 1 moves a near-duplicate of every NS
down by one standard deviation of the scores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

SIMILARITY, SHARE = "similarity", "share"
#: what a kernel reads of the shown items' image-image rows
ROWS, NEIGHBOURS = "rows", "neighbours"


class Shown(Protocol):
    """The image-image similarities of a round's shown items ``[c, d]``, read lazily."""

    n_gallery: int

    def rows(self) -> torch.Tensor:
        """``[c, d, G]`` float32: each shown item's row against the whole gallery."""
        ...

    def neighbours(self, m: int) -> torch.Tensor:
        """``[c, d, m]`` int64: the gallery indices of each shown row's m largest entries
        (``torch.topk``; m <= G)."""
        ...


class DenseShown:
    """A :class:`Shown` over given rows ``[c, d, G]`` (hand-made examples; the reference
    semantics the table-backed source reproduces)."""

    def __init__(self, sims: torch.Tensor) -> None:
        self.sims = sims
        self.n_gallery = sims.shape[-1]

    def rows(self) -> torch.Tensor:
        return self.sims

    def neighbours(self, m: int) -> torch.Tensor:
        return self.sims.topk(m, dim=-1).indices


@dataclass(frozen=True)
class Kernel:
    name: str
    unit: str
    reads: str  # ROWS or NEIGHBOURS
    fn: Callable[[Shown, torch.Tensor, int, torch.Tensor], torch.Tensor]  # (shown, mask, neighbours, prev)


def _mean_rows(sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(sims.dtype)
    return (sims * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)


def _mean(shown: Shown, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    return _mean_rows(shown.rows(), mask)


def _max(shown: Shown, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    masked = shown.rows().masked_fill(~mask[..., None], float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), masked, torch.zeros_like(masked))


def _knn(shown: Shown, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    """The share of the set whose m nearest include g, from the neighbour indices alone: a
    count per gallery item (``scatter_add`` of exact 0/1 terms, so the same floats as the
    mean of dense 0/1 indicator rows) over the set's size."""
    m = min(neighbours, shown.n_gallery)
    idx = shown.neighbours(m)  # [c, d, m]
    c = idx.shape[0]
    member = mask.to(prev.dtype)[..., None].expand(idx.shape)  # 1 for each neighbour of a set member
    counts = torch.zeros(c, shown.n_gallery, dtype=prev.dtype, device=idx.device)
    counts.scatter_add_(1, idx.reshape(c, -1), member.to(idx.device).reshape(c, -1))
    return counts / mask.to(counts).sum(1, keepdim=True).clamp(min=1)


def standardised(x: torch.Tensor) -> torch.Tensor:
    """Each row over the gallery (last dim) to mean 0, std 1; non-finite entries (excluded
    items) count as the row mean; a constant row becomes 0."""
    finite = torch.isfinite(x)
    n = finite.sum(-1, keepdim=True).clamp(min=1)
    z = torch.where(finite, x, torch.zeros_like(x))
    mean = z.sum(-1, keepdim=True) / n
    z = torch.where(finite, z - mean, torch.zeros_like(x))
    std = (z.pow(2).sum(-1, keepdim=True) / n).sqrt()
    return z / torch.where(std > 0, std, torch.ones_like(std))


def _residual(shown: Shown, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    zs, zq = standardised(shown.rows()), standardised(prev)[:, None, :]
    rho = (zs * zq).mean(-1, keepdim=True)  # correlation of each item's row with the query's scores
    return _mean_rows(zs - rho * zq, mask)


#: ``refresh.kernel`` -> implementation
KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("mean", SIMILARITY, ROWS, _mean),
        Kernel("max", SIMILARITY, ROWS, _max),
        Kernel("knn", SHARE, NEIGHBOURS, _knn),
        Kernel("residual", SIMILARITY, ROWS, _residual),
    )
}
