"""The training batch every registered model's ``training_step`` and ``validation_step`` receive.

The DataModule's training and validation loaders collate their
:class:`~datamodules.base.TrainPairs` items (``(image index, item, instruction, relevant)``)
into one :class:`TrainBatch`: a typed record instead of a positional tuple, so a model reads
``batch.index``, ``batch.items``, ``batch.texts`` and, where it wants it, ``batch.relevant``.
Lightning moves it to the model's device field by field (it is a dataclass); ``pin_memory``
pins its tensors when the loader pins memory (a GPU run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from datamodules.base import collate_indexed


@dataclass
class TrainBatch:
    """One training (or validation) batch.

    index: ``[B]`` long, the split index of each item's image (items of the same image are
        positives of each other).
    items: ``[B, ...]`` what the model encodes for each image: transformed pixels, or the item
        loader's stored items (e.g. a frozen vision tower's tokens).
    texts: the ``B`` instructions.
    relevant: ``[B, K]`` long, the split indices of every image relevant to each instruction
        (-1 padded; SynthScenes: exact, real datasets: the item's own image), or None.
    """

    index: torch.Tensor
    items: torch.Tensor
    texts: list[str]
    relevant: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.index.shape[0]
        if (
            self.items.shape[0] != n
            or len(self.texts) != n
            or (self.relevant is not None and self.relevant.shape[0] != n)
        ):
            raise ValueError(
                f"TrainBatch: index has {n} rows, items {self.items.shape[0]}, texts "
                f"{len(self.texts)}" + ("" if self.relevant is None else f", relevant {self.relevant.shape[0]}")
            )

    def __len__(self) -> int:
        return self.index.shape[0]

    def pin_memory(self) -> TrainBatch:
        return TrainBatch(
            self.index.pin_memory(),
            self.items.pin_memory(),
            self.texts,
            None if self.relevant is None else self.relevant.pin_memory(),
        )


def collate_train(rows: Sequence[tuple]) -> TrainBatch:
    """``(index, item, text[, relevant])`` rows -> a :class:`TrainBatch` (:func:`collate_indexed`)."""
    return TrainBatch(*collate_indexed(list(rows)))
