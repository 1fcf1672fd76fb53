"""A bounded cache of full image-image rows (``[G]`` float32 each) of shown gallery items.

The kernels that read whole rows (``mean``, ``max``, ``residual``) need, every round, the
rows of the items shown; items recur across rounds and query chunks, so their rows are
kept up to a budget in MB: ``floor(budget / (4 G))`` rows, first come first kept. A row
that does not fit is scored again when next needed (the same model call on the same
inputs). At the tiny size the budget holds every row (1000 rows are 4 MB); at 1M images a
1 GB budget holds 256 rows, so memory stays bounded whatever the gallery size.
"""

from __future__ import annotations

import torch


class RowCache:
    def __init__(self, n_gallery: int, budget_mb: float) -> None:
        self.n_gallery = n_gallery
        self.capacity = int(budget_mb * 2**20 // (4 * max(1, n_gallery)))
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def contains(self, items: torch.Tensor) -> torch.Tensor:
        """``[len(items)]`` bool: which items' rows are cached."""
        return torch.tensor([int(i) in self._rows for i in items.tolist()], dtype=torch.bool)

    def get(self, items: torch.Tensor) -> torch.Tensor:
        """``[len(items), G]`` cached rows (every item must be cached)."""
        if len(items) == 0:
            return torch.zeros(0, self.n_gallery)
        return torch.stack([self._rows[int(i)] for i in items.tolist()])

    def put(self, items: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep the rows ``rows[b, G]`` of ``items[b]`` while the budget allows."""
        for i, row in zip(items.tolist(), rows, strict=True):
            if len(self._rows) >= self.capacity:
                return
            self._rows.setdefault(int(i), row.clone())
