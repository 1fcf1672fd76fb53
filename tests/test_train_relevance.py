"""Relevance in training batches: datamodule plumbing and the real-data fallback."""

from __future__ import annotations

import torch

from datamodules.base import (
    CaptionRecord,
    ImageRecord,
    InstructionTemplates,
    RelevantImages,
    TrainPairs,
    collate_indexed,
)
from datamodules.coco import CocoKarpathyDataModule
from datamodules.datamodule import DataConfig
from datamodules.synthetic import SyntheticDataModule
from tests.fixtures_real import write_coco_karpathy

SMALL = {"n_train": 40, "n_val": 10, "n_test": 30}


def _zeros(im):
    return torch.zeros(3, 2, 2)


# -- datamodule plumbing -----------------------------------------------------------------------
def test_synthetic_batches_carry_each_captions_exact_relevant_images(tmp_path):
    dm = SyntheticDataModule(DataConfig(root=str(tmp_path), batch_size=8, options=dict(SMALL)))
    dm.prepare_data()
    dm.set_transform(_zeros)
    records = dm.records("train")
    index = {r.image_id: i for i, r in enumerate(records)}
    # (image, instruction) -> the relevant images of the caption it was made from
    expected: dict[tuple[int, str], list[list[int]]] = {}
    for j, r in enumerate(records):
        for cap, ids in zip(r.captions, r.relevant_images):
            for t in dm.templates.templates:
                expected.setdefault((j, t.format(caption=cap.text)), []).append(sorted(index[i] for i in ids))
    assert any(len(ids) > 1 for rows in expected.values() for ids in rows)  # generic captions match several
    seen = 0
    for b in dm.train_dataloader():
        idx, texts, relevant = b.index, b.texts, b.relevant
        assert relevant.dtype == torch.long and relevant.shape[0] == len(idx)
        for j, text, row in zip(idx.tolist(), texts, relevant.tolist()):
            ids = [i for i in row if i >= 0]
            assert row[len(ids) :] == [-1] * (len(row) - len(ids))  # -1 padding at the end only
            assert ids in expected[(j, text)] and j in ids
            seen += 1
    assert seen == len(records)


def test_real_format_datasets_fall_back_to_the_same_image(tmp_path):
    write_coco_karpathy(tmp_path)
    dm = CocoKarpathyDataModule(DataConfig(root=str(tmp_path), batch_size=4))
    dm.set_transform(_zeros)
    batches = list(dm.train_dataloader())
    assert batches and all(b.relevant is not None for b in batches)
    for b in batches:
        assert b.relevant.shape == (len(b), 1) and torch.equal(b.relevant[:, 0], b.index)


def test_train_pairs_and_collate_keep_relevance_inside_the_split():
    recs = [
        ImageRecord("a", "a.png", (CaptionRecord("x"),), relevant_images=(("a", "c", "gone"),)),
        ImageRecord("b", "b.png", (CaptionRecord("y"),)),
        ImageRecord("c", "c.png", (CaptionRecord("x"),), relevant_images=(("a", "c"),)),
    ]
    pairs = TrainPairs(recs, _zeros, InstructionTemplates(), cache=True)
    pairs._cache = {i: torch.zeros(3, 2, 2) for i in range(3)}  # no image files needed
    items = [pairs[i] for i in range(3)]
    assert [it[3] for it in items] == [(0, 2), (1,), (0, 2)]  # "gone" is not in the split
    assert all(isinstance(it[3], RelevantImages) for it in items)
    collated = collate_indexed(items)
    assert torch.equal(collated[3], torch.tensor([[0, 2], [1, -1], [0, 2]]))
