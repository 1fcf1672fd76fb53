"""FLOPs per component of a model that implements ``cost_components`` (``lightning_modules/cost.py``).

Every call a component returns is counted with fvcore (:func:`benchmark.measure.flops.
count_flops`: multiply-adds, with the sdpa and baddbmm handles, an unsupported matmul- or
attention-like op raises) and divided by the items it processes; calls with equal keys are
traced once. Per component the per-item counts give the mean and the spread over the real
inputs of the sample (std, min, max): they differ where the cost depends on the input (the
dynamic L of IDQ-Former, token reduction).

While tracing, transformers' mask helpers are told they are not being traced: they then
build the masks as in eager execution (a materialised all-ones padding mask would otherwise
give the Q-Former's ITM pass a cross-attention mask of the wrong length). Masks carry no
FLOPs, so the count is that of the eager computation.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from benchmark.measure.flops import count_flops
from lightning_modules.cost import TOTAL_COMPONENTS, CostCall, CostModel

try:
    from transformers import masking_utils
except ImportError:  # older transformers: no mask helpers to patch
    masking_utils = None  # type: ignore[assignment]

GIGA = 1e9


@dataclass(frozen=True)
class ComponentFlops:
    """Per-item GFLOPs (fvcore multiply-adds) of one component over the sample's calls."""

    name: str
    per_item: tuple[float, ...]
    traces: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_item))

    def stats(self) -> dict[str, float]:
        x = np.asarray(self.per_item)
        return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


class _Call(nn.Module):
    """``fn(*tensors)`` as a module for fvcore; ``owner`` registers the model's parameters."""

    def __init__(self, fn: Callable[..., object], owner: nn.Module | None) -> None:
        super().__init__()
        self.fn = fn
        self.owner = owner

    def forward(self, *inputs: torch.Tensor):
        return self.fn(*inputs)


@contextlib.contextmanager
def eager_masks() -> Iterator[None]:
    """Make transformers' mask helpers take their eager path while fvcore traces.

    transformers' ``create_bidirectional_mask`` drops an all-ones padding mask in eager mode
    but materialises it while tracing; the Q-Former's cross-attention mask is then built for
    all ``L + T`` tokens although only the ``L`` queries cross-attend, and the traced ITM pass
    fails on the shape (transformers 5.x). Reporting "not tracing" to the mask code makes the
    trace follow the eager path (masks never carry FLOPs).
    """
    mu = masking_utils
    if mu is None:  # older transformers: nothing to patch
        yield
        return
    saved = mu.is_tracing
    mu.is_tracing = lambda *_: False
    try:
        yield
    finally:
        mu.is_tracing = saved


def count_call(call: CostCall, owner: nn.Module | None = None) -> int:
    """fvcore multiply-adds of one call (all of its items), less those of ``call.minus``."""
    with warnings.catch_warnings(), eager_masks(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript tracer and deprecation warnings
        total = count_flops(_Call(call.fn, owner), tuple(call.inputs)).total
    return total - (count_call(call.minus, owner) if call.minus is not None else 0)


def component_flops(
    components: Mapping[str, Sequence[CostCall]], owner: nn.Module | None = None
) -> dict[str, ComponentFlops]:
    """Count every component's calls (see the module docstring)."""
    out: dict[str, ComponentFlops] = {}
    for name, calls in components.items():
        if not calls:
            raise ValueError(f"cost component {name!r} has no calls")
        seen: dict[object, int] = {}
        per_item = []
        traces = 0
        for call in calls:
            if call.key is None or call.key not in seen:
                total = count_call(call, owner)
                traces += 1
                if call.key is not None:
                    seen[call.key] = total
            else:
                total = seen[call.key]
            per_item.append(total / call.items / GIGA)
        out[name] = ComponentFlops(name, tuple(per_item), traces)
    return out


def flops_metrics(flops: Mapping[str, ComponentFlops]) -> dict[str, float]:
    """``gflops/<component>`` (mean) with ``_std``, ``_min``, ``_max``; ``gflops/total`` (sum of the
    means of the components in ``TOTAL_COMPONENTS`` the model has)."""
    m: dict[str, float] = {}
    for name, f in flops.items():
        s = f.stats()
        m[f"gflops/{name}"] = s["mean"]
        for k in ("std", "min", "max"):
            m[f"gflops/{name}_{k}"] = s[k]
    summed = [flops[c].mean for c in TOTAL_COMPONENTS if c in flops]
    if summed:
        m["gflops/total"] = float(sum(summed))
    return m


def measure_component_flops(model: CostModel, sample) -> tuple[dict[str, float], dict]:
    """``(gflops metrics, what was measured)`` of a model with ``cost_components`` (an ``nn.Module``)."""
    t = time.perf_counter()
    with torch.no_grad():
        components = model.cost_components(sample)
    flops = component_flops(components, cast(nn.Module, model))  # the suite's models are modules
    detail = {
        "convention": "fvcore multiply-adds (1 multiply-add = 1 FLOP; torch.utils.flop_counter counts 2)",
        "components": {n: {"calls": len(f.per_item), "traces": f.traces} for n, f in flops.items()},
        "total_of": [c for c in TOTAL_COMPONENTS if c in flops],
        "images": len(sample.pixels),
        "texts": len(sample.texts),
        "seconds": time.perf_counter() - t,
    }
    return flops_metrics(flops), detail
