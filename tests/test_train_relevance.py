"""Relevance in training batches: datamodule plumbing, the real-data fallback, the relevance
mask, and ours' length oracle that leaves relevant non-paired images out (``oracle_relevant``)."""

from __future__ import annotations

import pytest
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
from lightning_modules.components.dynamic_length import LengthConfig, dynamic_itc, oracle_lengths
from lightning_modules.components.relevance import relevance_mask
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
    for idx, _, texts, relevant in dm.train_dataloader():
        assert relevant.dtype == torch.long and relevant.shape[0] == len(idx)
        for j, text, row in zip(idx.tolist(), texts, relevant.tolist()):
            ids = [i for i in row if i >= 0]
            assert row[len(ids):] == [-1] * (len(row) - len(ids))  # -1 padding at the end only
            assert ids in expected[(j, text)] and j in ids
            seen += 1
    assert seen == len(records)


def test_real_format_datasets_fall_back_to_the_same_image(tmp_path):
    write_coco_karpathy(tmp_path)
    dm = CocoKarpathyDataModule(DataConfig(root=str(tmp_path), batch_size=4))
    dm.set_transform(_zeros)
    batches = list(dm.train_dataloader())
    assert batches and all(len(b) == 4 for b in batches)
    for idx, _, _, relevant in batches:
        assert relevant.shape == (len(idx), 1) and torch.equal(relevant[:, 0], idx)


def test_train_pairs_and_collate_keep_relevance_inside_the_split():
    recs = [ImageRecord("a", "a.png", (CaptionRecord("x"),), relevant_images=(("a", "c", "gone"),)),
            ImageRecord("b", "b.png", (CaptionRecord("y"),)),
            ImageRecord("c", "c.png", (CaptionRecord("x"),), relevant_images=(("a", "c"),))]
    pairs = TrainPairs(recs, _zeros, InstructionTemplates(), cache=True)
    pairs._cache = {i: torch.zeros(3, 2, 2) for i in range(3)}  # no image files needed
    items = [pairs[i] for i in range(3)]
    assert [it[3] for it in items] == [(0, 2), (1,), (0, 2)]  # "gone" is not in the split
    assert all(isinstance(it[3], RelevantImages) for it in items)
    collated = collate_indexed(items)
    assert torch.equal(collated[3], torch.tensor([[0, 2], [1, -1], [0, 2]]))


# -- the mask ------------------------------------------------------------------------------------
def test_relevance_mask_over_batch_and_queue_indices_with_fallback():
    relevant = torch.tensor([[3, 7, -1], [5, -1, -1]])
    pool = torch.tensor([3, 5, 9, 7, 0])  # batch images 3, 5, then queued 9, 7, 0
    mask = relevance_mask(relevant, pool, torch.tensor([3, 5]))
    assert mask.tolist() == [[True, False, False, True, False], [False, True, False, False, False]]
    same = relevance_mask(None, pool, torch.tensor([3, 5]))  # a batch without the column
    assert same.tolist() == [[True, False, False, False, False], [False, True, False, False, False]]
    with pytest.raises(ValueError):
        relevance_mask(None, pool)


# -- the oracle ------------------------------------------------------------------------------------
def test_oracle_ignores_relevant_negatives():
    """Text 0 (generic) is paired with image 0; image 1 satisfies it too and outscores the pair
    until the pair's 6th query; image 2 is a true negative."""
    sims = torch.zeros(1, 3, 6)
    sims[0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.95])  # the pair
    sims[0, 1] = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9, 0.9])  # relevant, not the pair
    sims[0, 2] = torch.tensor([0.4, 0.4, 0.4, 0.4, 0.4, 0.4])  # a true negative
    paired, relevant = torch.tensor([[True, False, False]]), torch.tensor([[False, True, False]])
    assert oracle_lengths(sims, paired).tolist() == [6]  # image 1 as a negative: L_max is "needed"
    assert oracle_lengths(sims, paired, ignore=relevant).tolist() == [1]  # rank 1 among true negatives
    assert oracle_lengths(sims, paired | relevant).tolist() == [1]  # the best relevant image ranks first
    sims[0, 2, 0] = 0.6  # a true negative that beats the pair until its 6th query
    assert oracle_lengths(sims, paired, ignore=relevant).tolist() == [6]


def test_dynamic_itc_oracle_modes():
    texts = torch.eye(3)[:2]
    images = torch.zeros(2, 3, 3)
    images[0, :, 0] = torch.tensor([0.2, 0.2, 0.9])  # text 0's pair: its last query matches
    images[1, :, 0] = torch.tensor([0.5, 0.5, 0.5])  # relevant to text 0 too (a generic caption)
    images[1, :, 1] = 0.8  # text 1's pair
    positives = torch.eye(2, dtype=torch.bool)
    relevant = torch.tensor([[True, True], [False, True]])
    r = torch.tensor([0.0, 0.0])
    targets = {}
    for mode in ("negative", "ignore", "positive"):
        cfg = LengthConfig(l_base=1, l_max=3, l_init=2, oracle_weight=1.0, oracle_relevant=mode)
        losses, *_ = dynamic_itc(texts, images, cfg.soft_length(r), r, positives, 0.07, cfg, oracle_relevant=relevant)
        targets[mode] = losses["oracle"].item()
    # as a negative, image 1 forces text 0 to L_max (r* = 1: a large BCE against r = 0); otherwise L* = 1
    assert targets["negative"] > 1.0 > 1e-4 > max(targets["ignore"], targets["positive"])
    with pytest.raises(ValueError, match="oracle_relevant"):
        LengthConfig(oracle_relevant="sometimes")
