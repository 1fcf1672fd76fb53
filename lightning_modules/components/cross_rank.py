"""Contrastive negatives from every DDP process: the global batch as one process sees it.

Under DDP each process holds its own part of the batch. The contrastive losses of the suite
(CLIP's InfoNCE, the BLIP-2 family's ITC, ours' length-masked ITC) then score each process's
rows against the *global* batch, as the reference implementations do:

* open_clip (``src/open_clip/loss.py``, ``gather_features(gather_with_grad=True)`` with
  ``local_loss=True``): the features of every process are gathered *with gradient*
  (``torch.distributed.nn.functional.all_gather``), and each process computes the logits of
  its local rows against the gathered columns only -- O(local x global) memory;
* LAVIS (``blip2_qformer.py``: ``all_gather_with_grad``, ``concat_all_gather``): the same for
  BLIP-2's ITC, and the ITM hard negatives are drawn from the gathered similarities, their
  inputs (frozen image features, token ids) gathered without gradient.

Why the gradient is then the single-process one: with the local loss ``loss_k`` = the mean of
rank k's per-row terms (each row against all ``N`` columns), the global loss is ``L = sum_k
(n_k / N) loss_k``. The gather's backward hands every process the sum, over all processes, of
the gradient on its own features, so process k's parameter gradient is its share of ``d(sum_j
w_j loss_j)/d theta``; DDP averages over the ``W`` processes, so each local loss is weighted by
``W n_k / N`` (:attr:`GlobalBatch.loss_scale`, exactly 1 when every process has the same
number of rows, which Lightning's ``DistributedSampler`` ensures).

:class:`GlobalBatch` is built once per step (one collective for the row counts);
:func:`global_batch` gives None when there is nothing to gather (one process, or
``train.gather_negatives`` false), so single-process training runs exactly the code it ran
before gathering existed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Processes in the default group (1 outside DDP)."""
    return torch.distributed.get_world_size() if _distributed() else 1


@dataclass(frozen=True)
class GlobalBatch:
    """This process's place in the global batch: its ``rank`` and every process's row count."""

    rank: int
    sizes: tuple[int, ...]

    @classmethod
    def gather_from(cls, n_local: int, device: torch.device | str) -> GlobalBatch:
        """Every process's row count (a collective: every process must call it)."""
        counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
        torch.distributed.all_gather(counts, torch.tensor([n_local], dtype=torch.long, device=device))
        return cls(torch.distributed.get_rank(), tuple(int(c) for c in counts))

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def start(self) -> int:
        """Global position of this process's first row (rows are in rank order)."""
        return sum(self.sizes[: self.rank])

    @property
    def local(self) -> slice:
        return slice(self.start, self.start + self.sizes[self.rank])

    @property
    def loss_scale(self) -> float:
        """``W n_local / N``: the weight of a local per-row mean so that DDP's average over the
        processes is the mean over the global batch (1.0 with equal shares)."""
        return self.world * self.sizes[self.rank] / self.total

    def widest(self, n: int, device: torch.device | str) -> int:
        """The largest ``n`` over the processes (a collective), e.g. a padded text width."""
        t = torch.tensor([n], dtype=torch.long, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t)

    def rows(self, x: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
        """Every process's ``x`` (``[n_k, ...]``, the same trailing shape everywhere) concatenated
        in rank order, ``[N, ...]``. ``grad``: the gradient flows back to every process's
        ``x`` (``torch.distributed.nn.functional.all_gather``); else a plain gather."""
        biggest = max(self.sizes)
        padded = x if x.shape[0] == biggest else F.pad(x, (0, 0) * (x.ndim - 1) + (0, biggest - x.shape[0]))
        if grad and torch.is_grad_enabled() and x.requires_grad:
            # lazy: torch builds without distributed support (is_available() False) cannot import it
            from torch.distributed.nn.functional import all_gather

            parts = list(all_gather(padded.contiguous()))
        else:
            parts = [torch.empty_like(padded) for _ in self.sizes]
            torch.distributed.all_gather(parts, padded.detach().contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, self.sizes)])

    def select(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``rows(x, grad=False)[index]`` without gathering the rows nobody chose: each process asks
        the owner of each global row in ``index`` for it and receives exactly those rows (two
        ``all_to_all_single``: the local row numbers, then the rows). BLIP-2's ITM negatives need
        one image's frozen tokens per anchor, so a process receives about its batch's worth
        (162 MB at 224 ViT-g images in fp16) instead of W times it. A collective."""
        index = index.to(x.device)
        bounds = torch.tensor(list(itertools.accumulate(self.sizes)), device=x.device)
        owner = torch.bucketize(index, bounds, right=True)  # the process that holds each row
        order = torch.argsort(owner, stable=True)
        starts = bounds - torch.tensor(self.sizes, device=x.device)
        wanted = (index - starts[owner])[order]  # local row numbers at their owners, grouped by owner
        mine = torch.bincount(owner, minlength=self.world)  # rows this process wants of each process
        theirs = torch.empty_like(mine)  # rows each process wants of this one
        torch.distributed.all_to_all_single(theirs, mine)
        n_mine, n_theirs = mine.tolist(), theirs.tolist()
        requests = index.new_empty(sum(n_theirs))  # the local rows the others want, grouped by process
        torch.distributed.all_to_all_single(requests, wanted, n_theirs, n_mine)
        got = x.new_empty((len(index), *x.shape[1:]))
        torch.distributed.all_to_all_single(got, x.detach()[requests].contiguous(), n_mine, n_theirs)
        out = torch.empty_like(got)
        out[order] = got
        return out

    def padded_rows(self, x: torch.Tensor, value: int | float) -> torch.Tensor:
        """:meth:`rows` (no gradient) of ``[n_k, T_k]`` tensors whose widths differ: each is
        padded with ``value`` to the widest first (e.g. token ids, relevance columns)."""
        width = self.widest(x.shape[1], x.device)
        return self.rows(F.pad(x, (0, width - x.shape[1]), value=value), grad=False)


def global_batch(enabled: bool, n_local: int, device: torch.device | str) -> GlobalBatch | None:
    """The step's :class:`GlobalBatch` when negatives are gathered (``enabled`` and more than one
    process), else None. A collective when it returns one: call it on every process."""
    if not enabled or world_size() == 1:
        return None
    return GlobalBatch.gather_from(n_local, device)


class CrossRankNegatives:
    """Mixin of the contrastive LightningModules: ``gather_negatives`` (``train.gather_negatives``,
    set by the runner before fitting; default True) and the step's :class:`GlobalBatch`."""

    #: score local rows against every process's items (effective only with more than one process)
    gather_negatives: bool = True

    if TYPE_CHECKING:  # provided by the LightningModule this is mixed into

        @property
        def device(self) -> torch.device: ...

    def global_batch(self, n_local: int) -> GlobalBatch | None:
        return global_batch(self.gather_negatives, n_local, self.device)
