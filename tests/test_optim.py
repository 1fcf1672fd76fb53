"""The shared optimizer: decay groups, the warm-up + cosine schedule, and scaled learning rates."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.optim import OptimConfig, build_optimizer


def _groups(opt) -> list[tuple[int, float, float]]:
    return [(len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups]


def test_scaled_parameters_get_their_own_learning_rate_and_keep_the_schedule():
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_ratio=0.0)
    out = build_optimizer(
        [*body.parameters(), *head.parameters(), *frozen.parameters()], cfg, 10, scaled=head.parameters(), lr_scale=10.0
    )
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    # body: weight (decay) + bias (no decay) at lr; head: the same at 10 x lr; frozen: nowhere
    assert _groups(opt) == [(1, 1e-3, 0.1), (1, 1e-3, 0.0), (1, 1e-2, 0.1), (1, 1e-2, 0.0)]
    assert opt.param_groups[2]["params"][0] is head.weight
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[2] / lrs[0] == pytest.approx(10.0) and lrs[0] == pytest.approx(0.5e-3)  # half-way down the cosine


def test_without_scaled_parameters_the_groups_are_decay_and_no_decay():
    m = torch.nn.Linear(3, 3)
    opt = build_optimizer(m.parameters(), OptimConfig(lr=2e-3, weight_decay=0.05), 4)["optimizer"]
    assert _groups(opt) == [(1, 2e-3, 0.05), (1, 2e-3, 0.0)]
