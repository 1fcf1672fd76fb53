"""The model contract: what ``bench run`` needs from a registered model, and its optional capabilities.

:class:`SuiteModel` is the whole life cycle the runner relies on (``benchmark/runner.py``,
``benchmark/store.py``): a typed ``Config`` dataclass (``model_args``), ``create`` a new
model from it, ``save_checkpoint`` / ``load_checkpoint`` a trained one, the
``checkpoint_dependencies`` it is built on, and the retrieval interface every evaluation
uses (:class:`~lightning_modules.base.RetrievalModel`). A model is also a Lightning module
(``training_step`` over :class:`~datamodules.batch.TrainBatch`, ``configure_optimizers``)
when it is trained (``train.max_epochs > 0``).

Everything else is optional and declared by implementing one small protocol, which the
suite checks with ``isinstance`` (never ``hasattr``):

* :class:`ScoreVariants` -- further scorings of the same embeddings, reported beside the main keys;
* :class:`ItemLoading` -- a loader of stored items (e.g. a frozen-feature cache) for the DataModule;
* :class:`ItemExtra` -- the name of an ``Encoded.extra`` tensor the gallery's cached item table holds;
* :class:`ExtraDirections` -- the directions whose scoring reads ``Encoded.extra`` at all;
* :class:`~lightning_modules.cost.CostModel` -- per-component FLOPs (``cost_components``);
* :class:`VqaPrefix` -- query outputs a frozen language model reads (``--task vqa``);
* :class:`MethodSettings` -- the settings of a token-reduction method, stored in the result file;
* :class:`GradCheckpointing` -- activation checkpointing of the trained layers.

:func:`check_model_class` refuses a registered class that does not honour :class:`SuiteModel`
with a message naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch

from lightning_modules.base import Encoded, RetrievalModel
from lightning_modules.cost import CostModel

__all__ = [
    "CostModel",
    "DependencyConfig",
    "ExtraDirections",
    "GradCheckpointing",
    "ItemExtra",
    "ItemLoading",
    "MethodSettings",
    "PretrainedConfig",
    "ScoreVariants",
    "SuiteModel",
    "VqaPrefix",
    "check_model_class",
    "dependencies_of",
]


@runtime_checkable
class SuiteModel(RetrievalModel, Protocol):
    """A registered model (``benchmark.registry.MODELS``).

    * ``Config``: a frozen dataclass of the model's options (``model_args``), validated on
      construction; ``config``: a built model's own (recorded in the result file).
    * ``checkpoint_dependencies``: ``{config field: registered model}``; at tiny size the runner
      fills an empty field with that model's cached checkpoint (trained first if absent), e.g.
      BLIP2's frozen vision tower comes from the tiny CLIP. ``{}`` for none.
    * ``create(config, optim, vocab_texts)``: a new model (``vocab_texts``: the training split's
      texts, for a tokenizer built from the data at tiny size).
    * ``save_checkpoint(directory)`` / ``load_checkpoint(directory)``: the trained model as a
      folder; the store writes it under a temporary name and renames it (atomic).
    * the retrieval interface: ``image_transform``, ``encode_images``, ``encode_texts``, ``score``.
    """

    Config: ClassVar[type]
    checkpoint_dependencies: ClassVar[Mapping[str, str]]
    config: Any

    @classmethod
    def create(cls, config: Any, optim: Any, vocab_texts: Sequence[str] = ()) -> SuiteModel: ...

    @classmethod
    def load_checkpoint(cls, directory: Path) -> SuiteModel: ...

    def save_checkpoint(self, directory: Path) -> None: ...


#: the members of :class:`SuiteModel`, checked on a model *class* by :func:`check_model_class`
SUITE_MODEL_MEMBERS = (
    "Config",
    "checkpoint_dependencies",
    "create",
    "load_checkpoint",
    "save_checkpoint",
    "image_transform",
    "encode_images",
    "encode_texts",
    "score",
)


def check_model_class(cls: type, name: str) -> type[SuiteModel]:
    """``cls`` if it honours :class:`SuiteModel` (a class cannot be ``isinstance``-checked before it
    is built, so its members are looked up on the class); else a TypeError naming what is missing."""
    missing = [m for m in SUITE_MODEL_MEMBERS if getattr(cls, m, None) is None]
    if missing:
        raise TypeError(
            f"model {name!r} ({cls.__module__}.{cls.__qualname__}) does not honour the SuiteModel "
            f"contract (lightning_modules/contract.py): missing {', '.join(missing)}"
        )
    return cast("type[SuiteModel]", cls)  # its members were checked just above


def dependencies_of(cls: type) -> dict[str, str]:
    """A model class's ``checkpoint_dependencies`` as a plain dict."""
    return dict(cls.checkpoint_dependencies)  # type: ignore[attr-defined]


@runtime_checkable
class ScoreVariants(Protocol):
    """``score_variants()`` -> ``{name: score_fn}``: further scorings of the same embeddings (e.g.
    BLIP-2's ITC-only score beside its ITM re-ranked one), reported as ``"{name}/{direction}/{metric}"``;
    ``score_variant_directions`` -> ``{name: directions}`` where a variant differs from ``score``
    (elsewhere the evaluation reuses the main results instead of rescoring); ``similarity_variant``:
    the variant whose scores are the reported ``Sim`` (None: ``score``)."""

    score_variant_directions: ClassVar[Mapping[str, tuple[str, ...]]]
    similarity_variant: str | None

    def score_variants(self) -> dict[str, Callable[[Encoded, Encoded], torch.Tensor]]: ...


@runtime_checkable
class ItemLoading(Protocol):
    """``item_loader(cache_root)``: what the DataModule serves instead of transformed pixels (e.g. a
    frozen vision tower's cached tokens), or None; the runner configures it for the run's
    hardware and storage dtype."""

    def item_loader(self, cache_root: Path) -> Any: ...


@runtime_checkable
class ItemExtra(Protocol):
    """``item_extra``: the ``Encoded.extra`` key of a per-gallery-item tensor the DataModule's
    cached item table holds whole (e.g. BLIP-2's vision tokens for re-ranking)."""

    item_extra: str


@runtime_checkable
class ExtraDirections(Protocol):
    """``extra_directions``: the directions (``t2i``, ``i2t``, ``i2i``) in which ``score`` reads the
    ``Encoded.extra`` tensors ``encode_*`` return (e.g. BLIP-2's vision tokens, for ITM re-ranking of
    text <-> image only). The evaluation keeps, and under DDP gathers, extras only for the sides of
    those directions (a query view's ViT-g tokens are 0.72 MB that i2i never reads). A model without
    it is taken to read them in every direction."""

    extra_directions: ClassVar[tuple[str, ...]]


@runtime_checkable
class VqaPrefix(Protocol):
    """``vqa_queries(images, questions)`` -> ``(query outputs [B, n, H], mask [B, n])``: the prefix
    a frozen causal LM reads in ``--task vqa``."""

    def vqa_queries(self, images: torch.Tensor, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class MethodSettings(Protocol):
    """``method_config()``: the settings and mode of the method that ran (e.g. token reduction),
    stored under ``method`` in the result file."""

    def method_config(self) -> dict: ...


@runtime_checkable
class GradCheckpointing(Protocol):
    """``enable_grad_checkpointing()``: activation checkpointing of the layers the model trains
    (``train.grad_checkpointing``)."""

    def enable_grad_checkpointing(self) -> None: ...


@runtime_checkable
class PretrainedConfig(Protocol):
    """A model config that can name a pretrained checkpoint (``--size full``)."""

    pretrained: str | None


@runtime_checkable
class DependencyConfig(Protocol):
    """A model config with per-dependency run-config overrides (``model_args.dependency_overrides``)."""

    dependency_overrides: dict | None
