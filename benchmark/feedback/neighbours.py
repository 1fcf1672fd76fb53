"""The top-k neighbour table of the gallery: per gallery item, the indices and scores of
its k most similar gallery items under the model's own image-image score, ``[G, k]``.

It replaces the dense gallery x gallery matrix for the kernels that read only each shown
item's nearest neighbours (``knn``). Rows are filled lazily -- the first time an item is
shown -- and in chunks: a chunk of rows is scored against the whole gallery, reduced with
``torch.topk`` (sorted, on the device that scored it) and only ``[chunk, k]`` is kept, so
the peak memory is ``O(row_chunk x G + G x k)``, never ``O(G^2)``. With k equal to the m
the kernel reads, the kept indices are what ``topk(m)`` of the dense row picks; with k > m
the first m of the sorted top k are the same set unless scores tie at the m-th place
(then either choice is one of the tied items, as with ``topk`` itself).
"""

from __future__ import annotations

import torch


class NeighbourTable:
    """A lazily filled ``[n, k]`` top-k table (int64 indices, float32 scores, on the CPU)."""

    def __init__(self, n: int, k: int) -> None:
        if not 1 <= k <= n:
            raise ValueError(f"a top-k table over {n} items needs 1 <= k <= {n}, got {k}")
        self.n, self.k = n, k
        self.indices = torch.zeros(0, k, dtype=torch.long)  # allocated on the first fill
        self.scores = torch.zeros(0, k)
        self.have = torch.zeros(n, dtype=torch.bool)

    def missing(self, items: torch.Tensor) -> torch.Tensor:
        """The distinct items of ``items`` whose row is not in the table yet, ascending."""
        items = torch.as_tensor(items, dtype=torch.long).reshape(-1)
        return torch.unique(items[~self.have[items]])

    def fill(self, items: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep the top k of ``rows[b, n]``, the image-image rows of ``items[b]``."""
        if rows.shape != (len(items), self.n):
            raise ValueError(f"expected rows of shape {(len(items), self.n)}, got {tuple(rows.shape)}")
        if self.indices.shape[0] == 0:
            self.indices = torch.zeros(self.n, self.k, dtype=torch.long)
            self.scores = torch.zeros(self.n, self.k)
        top = rows.float().topk(self.k, dim=-1, sorted=True)
        items = items.cpu()
        self.indices[items] = top.indices.cpu()
        self.scores[items] = top.values.cpu()
        self.have[items] = True

    def neighbours(self, items: torch.Tensor, m: int) -> torch.Tensor:
        """``[len(items), m]`` indices of each item's m nearest (every row must be filled)."""
        items = torch.as_tensor(items, dtype=torch.long).reshape(-1)
        if m > self.k:
            raise ValueError(f"the table keeps {self.k} neighbours per item, {m} were asked for")
        if not bool(self.have[items].all()):
            raise ValueError("neighbours of items whose row is not in the table")
        return self.indices[items, :m]

    @property
    def nbytes(self) -> int:
        return self.indices.numel() * self.indices.element_size() + self.scores.numel() * self.scores.element_size()
