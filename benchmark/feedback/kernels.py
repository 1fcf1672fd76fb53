"""How score refreshing turns the shown items' image-image similarities into one row per query.

Input: ``sims[c, d, G]`` (similarity of each of the d shown items to every gallery item,
under the model's own image-image score) and ``mask[c, d]`` (the items of the set being
aggregated: the PS or the NS of the round). Output: ``[c, G]``, 0 where the set is empty.
A registry (``refresh.kernel``), each entry with the unit of what it returns:

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

import torch

SIMILARITY, SHARE = "similarity", "share"


@dataclass(frozen=True)
class Kernel:
    name: str
    unit: str
    fn: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]  # (sims, mask, neighbours, prev)


def _mean(sims: torch.Tensor, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    m = mask.to(sims.dtype)
    return (sims * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)


def _max(sims: torch.Tensor, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    masked = sims.masked_fill(~mask[..., None], float("-inf")).amax(1)
    return torch.where(mask.any(1, keepdim=True), masked, torch.zeros_like(masked))


def _knn(sims: torch.Tensor, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    m = min(neighbours, sims.shape[-1])
    near = torch.zeros_like(sims)
    near.scatter_(-1, sims.topk(m, dim=-1).indices, 1.0)
    return _mean(near, mask, neighbours, prev)


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Each row over the gallery (last dim) to mean 0, std 1; non-finite entries (excluded
    items) count as the row mean; a constant row becomes 0."""
    finite = torch.isfinite(x)
    n = finite.sum(-1, keepdim=True).clamp(min=1)
    z = torch.where(finite, x, torch.zeros_like(x))
    mean = z.sum(-1, keepdim=True) / n
    z = torch.where(finite, z - mean, torch.zeros_like(x))
    std = (z.pow(2).sum(-1, keepdim=True) / n).sqrt()
    return z / torch.where(std > 0, std, torch.ones_like(std))


def _residual(sims: torch.Tensor, mask: torch.Tensor, neighbours: int, prev: torch.Tensor) -> torch.Tensor:
    zs, zq = _standardised(sims), _standardised(prev)[:, None, :]
    rho = (zs * zq).mean(-1, keepdim=True)  # correlation of each item's row with the query's scores
    return _mean(zs - rho * zq, mask, neighbours, prev)


#: ``refresh.kernel`` -> implementation
KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("mean", SIMILARITY, _mean),
    Kernel("max", SIMILARITY, _max),
    Kernel("knn", SHARE, _knn),
    Kernel("residual", SIMILARITY, _residual),
)}
