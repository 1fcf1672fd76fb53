"""Optimizer settings shared by every trainable model: AdamW with linear warm-up and cosine decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimConfig:
    """lr: peak learning rate; warmup_ratio: share of steps spent warming up linearly."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("optim.lr must be > 0")
        if self.weight_decay < 0:
            raise ValueError("optim.weight_decay must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("optim.warmup_ratio must be in [0, 1)")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    cfg: OptimConfig,
    total_steps: int | float,
    scaled: Iterable[torch.nn.Parameter] = (),
    lr_scale: float = 1.0,
) -> dict:
    """AdamW over ``params`` (no decay on biases and norms) with a per-step schedule;
    ``scaled`` parameters (also trained) get ``lr_scale`` times the learning rate.

    ``total_steps``: the schedule's length, e.g. Lightning's ``estimated_stepping_batches`` (an
    int, or ``inf`` for an unbounded fit). Returns the dict Lightning's ``configure_optimizers`` expects.
    """
    scaled = list(scaled)
    scaled_ids = {id(p) for p in scaled}
    params = [p for p in params if p.requires_grad and id(p) not in scaled_ids]
    groups = []
    for members, lr in ((params, cfg.lr), ([p for p in scaled if p.requires_grad], cfg.lr * lr_scale)):
        groups += [
            {"params": [p for p in members if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
            {"params": [p for p in members if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
        ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)
    total = max(1, total_steps)
    warmup = int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
