"""Helper for ``tests/test_metric_ddp.py``: evaluate a fixed "model" with Lightning, on 1 or 2 CPU processes.

Usage: ``python tests/ddp_metric_script.py OUT.json --devices 2`` (the repository root must be
importable, e.g. via ``PYTHONPATH``). With ``--devices 2`` Lightning's ``ddp`` strategy
(gloo) launches the second process by re-running this script. The gallery (37 images) and
the queries (91 captions) are NOT divisible by 2 and the test dataloaders get Lightning's
``DistributedSampler``, which pads each with one repeated item: the metric must drop it.
Items are "encoded" by looking up a seeded embedding table by their global index, so the
numbers cannot depend on the process layout. Rank 0 writes the metrics as JSON.

``--extras``: every image also carries a table row ``tok`` that the score reads (as re-ranking
reads vision tokens); ``--spill DIR``: that field is spilled to a file in DIR
(:mod:`benchmark.metrics.spill`) instead of being gathered; ``--several-machines``: with the
protocol of ranks on several machines (page-aligned rows, flushes, done-files).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.metrics import (
    DirectionSpec,
    RetrievalMetric,
    dense_score_fn,
    retrieval_metrics,
    source_relevance,
    transpose_relevance,
)
from benchmark.metrics.spill import SpillConfig
from datamodules.base import Relevance
from lightning_modules.base import Encoded, max_sim

N_IMAGES, N_CAPTIONS, BATCH = 37, 91, 5


@dataclass(frozen=True)
class TinyEvalSet:
    relevance: dict[str, Relevance]
    source: np.ndarray
    n_images: int
    n_queries: int


def eval_set() -> TinyEvalSet:
    """Caption q describes image q % 37; every 4th caption also matches a second image."""
    rng = np.random.default_rng(0)
    source = np.arange(N_CAPTIONS) % N_IMAGES
    t2i_rows = [[int(source[q])] + ([int(rng.integers(N_IMAGES))] if q % 4 == 0 else []) for q in range(N_CAPTIONS)]
    t2i = Relevance.from_lists([sorted(set(r)) for r in t2i_rows], N_IMAGES)
    i2i_rows = [
        sorted(set(rng.choice(N_IMAGES, 2, replace=False).tolist()) - {i}) if i % 3 else [] for i in range(N_IMAGES)
    ]
    relevance = {"t2i": t2i, "i2t": transpose_relevance(t2i), "i2i": Relevance.from_lists(i2i_rows, N_IMAGES)}
    return TinyEvalSet(relevance, source, N_IMAGES, N_CAPTIONS)


def tables() -> tuple[Encoded, Encoded]:
    """The fixed encodings: multi-vector images [37, 3, 8], single-vector texts with lengths."""
    g = torch.Generator().manual_seed(1234)
    images = torch.round(torch.randn(N_IMAGES, 3, 8, generator=g), decimals=1)  # rounded: ties happen
    texts = torch.round(torch.randn(N_CAPTIONS, 8, generator=g), decimals=1)
    return Encoded(images), Encoded(texts, torch.arange(N_CAPTIONS) % 3 + 1)


def token_table() -> torch.Tensor:
    """The images' extra rows ``[37, 16, 64]`` (float32: one page each, so that they spill page-aligned too)."""
    return torch.randn(N_IMAGES, 16, 64, generator=torch.Generator().manual_seed(99))


def reading_score(queries: Encoded, gallery: Encoded) -> torch.Tensor:
    """max_sim plus a per-image bias read from the gallery's ``tok`` rows (none for texts)."""
    scores = max_sim(queries, gallery)
    if gallery.extra:
        scores = scores + 0.3 * gallery.extra["tok"].float().mean(dim=(1, 2))[None, :]
    return scores


def reference_metrics() -> dict[str, float]:
    """The same numbers from the functional core on full score matrices, without Lightning."""
    es, (img, txt) = eval_set(), tables()
    src = source_relevance(es.source, N_IMAGES)
    specs = {
        "t2i": DirectionSpec(dense_score_fn(max_sim(txt, img)), es.relevance["t2i"], src),
        "i2t": DirectionSpec(dense_score_fn(max_sim(img, txt)), es.relevance["i2t"], transpose_relevance(src)),
        "i2i": DirectionSpec(dense_score_fn(max_sim(img, img)), es.relevance["i2i"], exclude_self=True),
    }
    return retrieval_metrics(specs)


class Indexed(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, i  # (global index, the "item")


class TableEncoder(L.LightningModule):
    def __init__(self, out: str, extras: bool = False, spill: str | None = None, machines: bool = False) -> None:
        super().__init__()
        img, txt = tables()
        self.register_buffer("image_table", img.emb)
        self.register_buffer("text_table", txt.emb)
        self.register_buffer("text_lengths", txt.lengths)
        self.register_buffer("token_table", token_table())
        self.extras = extras or spill is not None
        self.metric = RetrievalMetric(
            eval_set(),
            reading_score if self.extras else max_sim,
            chunk_size=16,
            spill=SpillConfig(Path(spill), 0) if spill else None,
        )
        self.spill, self.machines = spill, machines
        self.out = out
        self.seen = {"images": 0, "texts": 0}

    def setup(self, stage: str) -> None:
        self.metric.agree_spill_name(several_machines=self.machines)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        index, item = batch
        if dataloader_idx == 0:
            extra = {"tok": self.token_table[item]} if self.extras else None
            self.metric.update_images(index, Encoded(self.image_table[item], extra=extra))
            self.seen["images"] += len(index)
        else:
            self.metric.update_texts(index, Encoded(self.text_table[item], self.text_lengths[item]))
            self.seen["texts"] += len(index)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(Indexed(N_IMAGES), batch_size=BATCH), DataLoader(Indexed(N_CAPTIONS), batch_size=BATCH)]

    def on_test_epoch_end(self) -> None:
        collect, released = self.metric._collect, {}

        def watched(modality: str, n: int):  # are the gathered states let go once sorted?
            out = collect(modality, n)
            released[modality] = getattr(self.metric, f"{modality}_emb") == []
            return out

        self.metric._collect = watched  # type: ignore[method-assign]
        metrics = self.metric.compute()
        spilled = sorted(self.metric._spilled)
        left = sorted(p.name for p in Path(self.spill).iterdir()) if self.spill else []
        seen = self.all_gather(torch.tensor([self.seen["images"], self.seen["texts"]])).reshape(-1, 2).sum(0)
        if self.trainer.is_global_zero:
            with open(self.out, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "world_size": self.trainer.world_size,
                        "metrics": metrics,
                        "n_duplicates": self.metric.n_duplicates,
                        "seen": {"images": int(seen[0]), "texts": int(seen[1])},
                        "t2i_rank": self.metric.per_query["t2i/rank"].tolist(),
                        "text_lengths": self.metric.per_query["text_lengths"].tolist(),
                        "released": released,
                        "spilled": spilled,
                        "gathered_states": sorted(self.metric._defaults),
                        "spill_files_left": left,
                    },
                    f,
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--extras", action="store_true")
    parser.add_argument("--spill", default=None)
    parser.add_argument("--several-machines", action="store_true", help="spill as if the ranks were on two machines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        use_distributed_sampler=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(TableEncoder(args.out, args.extras, args.spill, args.several_machines))


if __name__ == "__main__":
    main()
