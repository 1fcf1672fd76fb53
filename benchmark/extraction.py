"""Frozen-feature extraction inside a Lightning ``predict`` loop (the feature cache's extractor).

The frozen-feature cache (:mod:`lightning_modules.components.feature_cache`) stores a split's
vision tokens once. :class:`LightningExtractor` computes a missing file where the run's
model computes: a ``Trainer.predict`` with the run's accelerator, devices, nodes, strategy and
evaluation precision (autocast), over a DataLoader with the run's workers. The split's
batches are dealt to the ranks whole (:class:`~datamodules.sharding.RankBatches`); rank 0
creates the preallocated temporary array (its row shape from one probe image), every rank
writes the rows of its own batches into it, and after a barrier rank 0 renames it into
place: one extraction per (tower, split), shared by all ranks, streamed to disk batch by
batch. The runner installs it before training and before evaluation, outside any other
Lightning loop.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import cast

import lightning as L
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.base import collate_indexed
from datamodules.sharding import RankBatches
from lightning_modules.components.feature_cache import RowWriter
from lightning_modules.components.vision_tower import VisionTower


class _TowerPredictor(L.LightningModule):
    """``predict_step``: the tower over one batch of pixels, its tokens written by index."""

    def __init__(self, tower: VisionTower, writer: RowWriter, probe: torch.Tensor, batch_size: int) -> None:
        super().__init__()
        assert isinstance(tower, nn.Module)
        self.tower = tower
        self.writer = writer
        self.probe = probe
        self.batch_size = batch_size

    def on_predict_start(self) -> None:
        with torch.no_grad():
            row_shape = tuple(self.tower(self.probe[None].to(self.device)).shape[1:])
        # every rank checks the disk: a refusal on rank 0 alone would leave the others at the barrier
        self.writer.check_space(row_shape)
        if self.trainer.is_global_zero:
            self.writer.prepare(row_shape)
        self.trainer.strategy.barrier("feature-file-created")
        if not self.trainer.is_global_zero:
            self.writer.attach()

    def predict_step(self, batch, batch_idx: int) -> None:
        index, pixels = batch
        self.writer.write(torch.as_tensor(index), self.tower(pixels))
        self.writer.mark_done(int(index[0]) // self.batch_size, self.global_rank)

    def on_predict_end(self) -> None:
        self.writer.flush()
        self.trainer.strategy.barrier("feature-rows-written")
        if self.trainer.is_global_zero:
            self.writer.commit()
        self.writer.close()
        self.trainer.strategy.barrier("feature-file-committed")


@dataclass(frozen=True)
class LightningExtractor:
    """The run's hardware settings for extraction (``benchmark.runner`` fills them from the run config)."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    progress: bool = False

    def __call__(self, tower: VisionTower, images: Dataset, writer: RowWriter, batch_size: int) -> None:
        with isolate_rng():  # a run trains the same whether its features were cached or not
            self._extract(tower, images, writer, batch_size)

    def _extract(self, tower: VisionTower, images: Dataset, writer: RowWriter, batch_size: int) -> None:
        n = len(cast(Sized, images))  # a map-style dataset
        sampler = RankBatches(n, batch_size, skip=writer.completed_batches())  # resumed: done ones skipped
        loader = DataLoader(
            images,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_indexed,
            persistent_workers=False,
            pin_memory=self.accelerator != "cpu" and torch.cuda.is_available(),
        )
        trainer = L.Trainer(
            accelerator=self.accelerator,
            devices=self.devices,
            num_nodes=self.num_nodes,
            strategy=self.strategy,
            logger=False,
            precision=self.precision,  # type: ignore[arg-type]  # a str; Lightning types a Literal
            enable_checkpointing=False,
            enable_progress_bar=self.progress,
            enable_model_summary=False,
            use_distributed_sampler=False,
            inference_mode=True,
        )
        try:
            trainer.predict(
                _TowerPredictor(tower, writer, images[0][1], batch_size), dataloaders=loader, return_predictions=False
            )
        finally:
            writer.close()  # on a crash the partial array and the logs stay, for a resume
