"""What a model's compute cost is made of: the optional ``cost_components`` protocol.

A model that wants its FLOPs measured per component implements
``cost_components(sample) -> {component: [CostCall, ...]}``: for real evaluation inputs
(``sample``: preprocessed gallery images and query instructions) it returns, per component,
the calls that component makes -- each a function of positional tensors, its inputs, and
the number of items it processes. The measurer (``benchmark/measure/run_costs.py``) counts
each call with fvcore and averages over the calls, so a component whose cost depends on the
input (the dynamic query length L of IDQ-Former, token reduction) is reported as a mean
with its spread. The measurer never needs to know model names.

The component names and what one item is (every figure is *per item*):

* ``vision``  -- the image encoder, per image;
* ``qformer`` -- the Q-Former's image-side pass a query needs for one image, per (image,
  instruction): BLIP-2 its 32 queries; IDQ-Former the instruction's L queries;
* ``text``    -- the text side of one instruction (IDQ-Former: with its QScaler), per
  instruction;
* ``rerank``  -- one instruction-conditioned re-ranking (ITM) pass, per re-ranked pair.

``gflops/total`` is the sum of these four: scoring one (image, instruction) pair from
scratch. Further names (e.g. ``qformer_index``, the per-image Q-Former cost of the gallery
index) are reported beside them but not summed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

#: components summed into ``gflops/total``
TOTAL_COMPONENTS = ("vision", "qformer", "text", "rerank")


@dataclass(frozen=True)
class CostSample:
    """Real evaluation inputs: ``pixels [n, 3, H, W]`` (the model's own transform) and instructions."""

    pixels: torch.Tensor
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4 or not len(self.pixels) or not self.texts:
            raise ValueError("CostSample needs pixels [n >= 1, 3, H, W] and at least one text")


@dataclass(frozen=True)
class CostCall:
    """One call of a component: ``fn(*inputs)`` processes ``items`` items.

    ``key``: calls of one component with equal keys cost the same (e.g. the same input
    shapes and the same L), so the measurer traces one of them; ``None`` traces every call.
    ``minus``: a call whose count is subtracted, for a part that is only reachable through
    a larger public call (e.g. the Q-Former as ``encode_images`` minus ``vision_tokens``).
    """

    fn: Callable[..., object]
    inputs: tuple[torch.Tensor, ...]
    items: int = 1
    key: Hashable | None = None
    minus: CostCall | None = None

    def __post_init__(self) -> None:
        if self.items < 1:
            raise ValueError("CostCall.items must be >= 1")


def shape_key(*tensors: torch.Tensor, extra: Hashable = None) -> tuple:
    """A :attr:`CostCall.key` from input shapes (plus anything else the cost depends on)."""
    return (tuple(tuple(t.shape) for t in tensors), extra)


@runtime_checkable
class CostModel(Protocol):
    """A model that names what its FLOPs are made of (see the module docstring)."""

    def cost_components(self, sample: CostSample) -> dict[str, Sequence[CostCall]]: ...
