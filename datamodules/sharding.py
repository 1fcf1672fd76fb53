"""Evaluation batches split across the ranks of a distributed run, whole batches at a time.

Evaluation (``Trainer.test``, feature extraction with ``Trainer.predict``) reads every item
exactly once. Lightning's ``DistributedSampler`` would interleave items (rank ``r`` gets
``r, r + N, ...``) and pad the last batch with repeats, so a rank's batches would hold other
items than a single process's batches. :class:`RankBatches` instead cuts the index range into
the same consecutive batches a single process reads and deals *whole batches* to the ranks
(batch ``b`` to rank ``b mod N``): every item is encoded in exactly the batch, and so with
exactly the arithmetic, of a one-process run, which is what makes N-process metrics equal
one-process metrics bit for bit. The rank and world size are read when iterating (the
process group exists by then, also in processes Lightning launches itself).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch.distributed as dist
from torch.utils.data import Sampler


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankBatches(Sampler[list[int]]):
    """Consecutive batches of ``batch_size`` indices over ``range(n)``; this rank's share of them."""

    def __init__(self, n: int, batch_size: int, skip: Collection[int] = ()) -> None:
        if n < 0 or batch_size < 1:
            raise ValueError(f"RankBatches needs n >= 0 and batch_size >= 1, got {n}, {batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.skip = frozenset(skip)  # batch ids already done (a resumed extraction)

    def batch_ids(self) -> list[int]:
        """This rank's batches, by global batch id (batch ``b`` holds items ``b * batch_size ...``).

        A rank never gets none: with fewer batches than ranks (or every batch of its share
        skipped) it repeats batch ``rank mod n_batches`` -- an item encoded twice in the same
        batch gives the same values, which the metric's de-duplication and an extraction's
        row writes absorb -- because Lightning runs no hook of a loop without batches, so that
        rank would miss the loop's collectives."""
        rank, world = rank_and_world()
        n_batches = -(-self.n // self.batch_size)
        mine = [b for b in range(rank, n_batches, world) if b not in self.skip]
        return mine or ([rank % n_batches] if n_batches else [])

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batch_ids():
            yield list(range(b * self.batch_size, min(self.n, (b + 1) * self.batch_size)))

    def __len__(self) -> int:
        return len(self.batch_ids())
