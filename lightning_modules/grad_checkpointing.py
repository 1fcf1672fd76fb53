"""Activation (gradient) checkpointing of a model's trained layers (``train.grad_checkpointing``).

The seam between the runner and the models: a model that supports the option has a method
``enable_grad_checkpointing()``; :func:`enable_grad_checkpointing` calls it, or refuses a model
without it with an error that names the option and the model. Inside the models two kinds of
layer loops are checkpointed:

* transformers modules (``Blip2QFormerModel``, ``CLIPModel``'s towers) through their own
  ``gradient_checkpointing_enable()``, non-reentrant (:func:`enable_hf`); transformers
  checkpoints only in training mode, so evaluation and frozen modules in eval mode are
  unchanged;
* the suite's own loops (the token-reduction ViT runner) through :func:`maybe_checkpoint`:
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` whenever gradients are
  recorded.

Non-reentrant checkpointing restores the RNG state when it recomputes (dropout draws the same
mask), so a step's loss and gradients equal those without checkpointing up to float rounding
(tested per model in ``tests/test_grad_checkpointing.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.utils.checkpoint import checkpoint

from lightning_modules.contract import GradCheckpointing

OPTION = "train.grad_checkpointing"
#: transformers' ``gradient_checkpointing_kwargs``: non-reentrant (inputs that need no gradient,
#: e.g. frozen vision tokens, still give the parameters inside their gradients)
HF_KWARGS = {"use_reentrant": False}

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def enable_hf(module: torch.nn.Module) -> None:
    """Checkpoint the layers of a transformers model (a ``PreTrainedModel`` that supports it)."""
    if not getattr(module, "supports_gradient_checkpointing", False):
        raise TypeError(f"{type(module).__name__} does not support transformers' gradient checkpointing")
    enable = getattr(module, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs=dict(HF_KWARGS))
    else:
        cast("PreTrainedModel", module).gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(HF_KWARGS))


def maybe_checkpoint(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, under non-reentrant activation checkpointing when ``enabled`` and autograd records."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def enable_grad_checkpointing(model: Any, model_name: str | None = None, error: type[Exception] = ValueError) -> None:
    """Turn checkpointing on in ``model`` (the runner calls it before ``fit`` when the option is on);
    a model without the seam raises ``error`` (the runner's: its ``ConfigError``)."""
    if not isinstance(model, GradCheckpointing):
        name = model_name or type(model).__name__
        raise error(
            f"{OPTION} is true but model {name!r} ({type(model).__name__}) does not support "
            f"activation checkpointing (it has no enable_grad_checkpointing()); set {OPTION} to false"
        )
    model.enable_grad_checkpointing()
