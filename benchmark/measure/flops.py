"""FLOPs of a module with fvcore, with the handles fvcore lacks, failing loudly on gaps.

fvcore's ``FlopCountAnalysis`` (TorchScript tracing) counts one multiply-add as one flop,
i.e. its numbers are MACs (timm calls them GMACs); we keep fvcore's convention and say so.
It has no handle for ``aten::scaled_dot_product_attention`` (the default attention in
transformers v5) nor for ``aten::baddbmm``, so attention silently goes missing; both are
registered here:

* sdpa: ``batch * heads * Sq * Sk * (d + dv)`` (QK^T and AV; softmax and scaling are
  element-wise, which fvcore never counts);
* baddbmm: ``b * n * m * p`` (the batched product; the added input is element-wise).

Any other traced op that looks like a matrix product or attention and has no handle
raises :class:`UnsupportedOpError` instead of being skipped. Inputs must be positional
tensors; outputs may be a tensor, a tuple/list, a dict or a transformers ``ModelOutput``
(the module is wrapped so the trace returns a tuple of tensors).

Token-pruning FLOPs can depend on the input: count over several real inputs and report
the mean (see measurement.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

# Unhandled ops matching this are errors, not silently skipped element-wise ops.
_MATMUL_LIKE = re.compile(r"(mm|matmul|attention|einsum|linear|conv|dot|\bmv\b|addmv|tensordot|bilinear)")


class UnsupportedOpError(RuntimeError):
    """A matmul- or attention-like op without a FLOP handle was traced."""


def _shape(value: Any) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise UnsupportedOpError("a FLOP handle met a tensor of unknown shape")
    return list(shape)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::scaled_dot_product_attention``: batch * Sq * Sk * (d + dv)."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``aten::baddbmm(input, b1 [b, n, m], b2 [b, m, p])``: b * n * m * p."""
    b, n, m = _shape(inputs[1])
    p = _shape(inputs[2])[-1]
    return b * n * m * p


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
}


def _tensors(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):  # dict and transformers ModelOutput
        out = list(out.values())
    if isinstance(out, Sequence) and not isinstance(out, str):
        return tuple(t for o in out for t in _tensors(o))
    if hasattr(out, "__dataclass_fields__"):
        return tuple(t for name in out.__dataclass_fields__ for t in _tensors(getattr(out, name)))
    return ()


class TupleOutput(nn.Module):
    """Wraps a module so it takes positional tensors and returns a tuple of tensors."""

    def __init__(self, module: nn.Module, method: str = "forward") -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _tensors(getattr(self.module, self.method)(*inputs))


@dataclass
class FlopCount:
    """fvcore FLOPs (multiply-adds) of one call: ``total`` and per operator (fvcore's short
    names, e.g. ``linear``, ``scaled_dot_product_attention``); ``skipped`` counts the
    element-wise ops fvcore ignores by design."""

    total: int
    by_operator: dict[str, int]
    skipped: dict[str, int]


def count_flops(
    module: nn.Module, inputs: tuple[torch.Tensor, ...] | torch.Tensor, method: str = "forward"
) -> FlopCount:
    """Trace ``module.<method>(*inputs)`` once and count its FLOPs (MACs) with fvcore.

    Raises :class:`UnsupportedOpError` when a matmul- or attention-like op has no handle.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    wrapped = TupleOutput(module, method)
    analysis = FlopCountAnalysis(wrapped, tuple(inputs)).set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    total = int(analysis.total())
    skipped = dict(analysis.unsupported_ops())
    missing = sorted(op for op in skipped if _MATMUL_LIKE.search(op.split("::")[-1]))
    if missing:
        raise UnsupportedOpError(f"no FLOP handle for {missing}: the count would silently miss them")
    return FlopCount(total, {k: int(v) for k, v in analysis.by_operator().items()}, skipped)
