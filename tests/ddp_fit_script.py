"""Helper for ``tests/test_train_ddp.py``: fit a tiny ours with Lightning's plain ``ddp`` strategy.

Usage: ``python tests/ddp_fit_script.py CHECKPOINT_DIR OUT.json`` (the repository root
importable). ``CHECKPOINT_DIR`` holds ``blip2/`` (a tiny BLIP2 whose config names ``clip/``).
Two CPU processes (gloo), ``strategy="ddp"`` -- i.e. ``find_unused_parameters=False``: a
trainable parameter without a gradient in a step is an error -- one epoch of 4 steps with
``qscaler_warmup=0.5``, so steps in the warm-up (QScaler head not learning) and after it
(learning) both run, with ITM and the oracle queue on. Rank 0 writes what it saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.batch import collate_train
from lightning_modules.idq_former import IdqConfig, IdqFormerRetrieval
from lightning_modules.optim import OptimConfig

TEXTS = [
    "find images of a red circle",
    "a large blue square left of a green star",
    "show me a yellow cross",
    "two purple triangles on a striped background",
]


class Items(Dataset):
    """(index, frozen tokens, caption, relevant images) as the SynthScenes DataModule gives them."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i % 12)
        return i % 12, torch.randn(5, 32, generator=g), TEXTS[i % 4], torch.tensor([i % 12, -1])


class Record(L.Callback):
    def __init__(self, model: IdqFormerRetrieval) -> None:
        self.head0 = [p.detach().clone() for p in model.qscaler.head.parameters()]
        self.warm: list[bool] = []
        self.head_moved: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.warm.append(module._warming_up())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.head_moved.append(any(not torch.equal(a, p) for a, p in zip(self.head0, module.qscaler.head.parameters())))


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    cfg = IdqConfig(
        blip2_checkpoint=str(ckpt / "blip2"),
        l_base=2,
        l_max=12,
        l_init=8,
        qscaler_warmup=0.5,
        oracle_queue=16,
        itm_max_anchors=2,
        cache_features=False,
    )
    model = IdqFormerRetrieval.create(cfg, OptimConfig())
    record = Record(model)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        deterministic=True,
    )
    trainer.fit(model, DataLoader(Items(), batch_size=4, shuffle=True, collate_fn=collate_train))
    if trainer.is_global_zero:
        out.write_text(
            json.dumps(
                {
                    "world_size": trainer.world_size,
                    "steps": trainer.global_step,
                    "warm": record.warm,
                    "head_moved": record.head_moved,
                }
            )
        )


if __name__ == "__main__":
    main()
