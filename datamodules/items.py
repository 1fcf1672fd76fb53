"""Datasets that serve a per-image *item* other than the decoded, transformed image.

A model may install an item loader on the DataModule (``RetrievalDataModule.
set_item_loader``): for a split it returns ``item_fn(index) -> tensor``, e.g. the frozen
vision features of that image read from an on-disk cache. These datasets are the pixel
datasets of :mod:`datamodules.base` with the image replaced by ``item_fn(index)``; caption
and template sampling are unchanged (the same random draws in the same order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from datamodules.base import ImageRecord, InstructionTemplates, TrainPairs, Transform

ItemFn = Callable[[int], torch.Tensor]


class IndexedItems(Dataset):
    """Gallery items: yields ``(global_index, item_fn(global_index))``."""

    def __init__(self, n: int, item_fn: ItemFn) -> None:
        self.n = n
        self.item_fn = item_fn

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.item_fn(i)


class ItemPairs(TrainPairs):
    """Training pairs ``(image_index, item_fn(image_index), instruction_text)``."""

    def __init__(
        self, records: Sequence[ImageRecord], transform: Transform, templates: InstructionTemplates, item_fn: ItemFn
    ) -> None:
        super().__init__(records, transform, templates, cache=False)
        self.item_fn = item_fn

    def _image(self, i: int) -> torch.Tensor:
        return self.item_fn(i)
