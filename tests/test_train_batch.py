"""The typed training batch: collated from the training pairs, checked on construction, and
moved to a device by Lightning as a whole."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from datamodules.base import RelevantImages
from datamodules.batch import TrainBatch, collate_train


def _rows(relevant: bool) -> list[tuple]:
    rows = [
        (3, torch.zeros(2, 2), "a red circle", RelevantImages((3, 5))),
        (5, torch.ones(2, 2), "a blue square", RelevantImages((5,))),
    ]
    return rows if relevant else [r[:3] for r in rows]


def test_collate_gives_named_columns_with_and_without_relevance():
    b = collate_train(_rows(True))
    assert len(b) == 2 and b.index.tolist() == [3, 5] and b.texts == ["a red circle", "a blue square"]
    assert b.items.shape == (2, 2, 2) and b.relevant.tolist() == [[3, 5], [5, -1]]
    assert collate_train(_rows(False)).relevant is None


def test_rows_that_do_not_line_up_are_refused():
    with pytest.raises(ValueError, match="index has 2 rows, items 3, texts 2"):
        TrainBatch(torch.arange(2), torch.zeros(3, 4), ["a", "b"])
    with pytest.raises(ValueError, match="relevant 1"):
        TrainBatch(torch.arange(2), torch.zeros(2, 4), ["a", "b"], torch.zeros(1, 1, dtype=torch.long))


def test_lightning_moves_every_tensor_field():
    b = collate_train(_rows(True))
    moved = move_data_to_device(b, torch.device("meta"))
    assert isinstance(moved, TrainBatch) and moved.texts == b.texts
    assert {t.device.type for t in (moved.index, moved.items, moved.relevant)} == {"meta"}
