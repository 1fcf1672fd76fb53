"""Names -> implementations, for models and datasets.

Entries are registered as ``"module:attribute"`` strings and imported only when asked
for, so that listing names (``bench --help``, error messages) never imports torch. A
registry refuses duplicate names, and an unknown name raises :class:`UnknownNameError`
listing the valid ones (the CLI turns it into exit code 2). Tests parametrize over the
registries: every registered name is exercised at tiny size.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


class UnknownNameError(KeyError):
    """An unknown model or dataset name; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:Attribute"
    description: str

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Names -> lazily imported implementations. ``check`` (``"module:function"``, imported on the
    first ``get``): called as ``check(implementation, name)`` on every implementation handed out,
    it returns it or raises (models: :func:`lightning_modules.contract.check_model_class`)."""

    def __init__(self, kind: str, check: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._check = None if check is None else Entry("check", check, "")

    def register(self, name: str, target: str, description: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].target})")
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        self._entries[name] = Entry(name, target, description)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def get(self, name: str) -> Any:
        implementation = self.entry(name).load()
        return implementation if self._check is None else self._check.load()(implementation, name)

    def unregister(self, name: str) -> None:
        """Remove a name (e.g. a model a test registered)."""
        self.entry(name)
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


#: every model honours lightning_modules/contract.py's SuiteModel (checked when it is loaded)
MODELS = Registry("model", check="lightning_modules.contract:check_model_class")
MODELS.register("clip", "lightning_modules.clip:ClipRetrieval", "CLIP dual encoder (transformers CLIPModel)")
MODELS.register(
    "blip2",
    "lightning_modules.blip2:Blip2Retrieval",
    "BLIP-2: frozen vision tower + Q-Former (32 queries), ITC + ITM re-ranking",
)
MODELS.register(
    "ours",
    "lightning_modules.idq_former:IdqFormerRetrieval",
    "BLIP2-IDQ-Former: BLIP-2 with an instruction-dependent number of queries (QScaler, nested queries)",
)
MODELS.register(
    "dynamicvit",
    "lightning_modules.dynamicvit_model:DynamicViTRetrieval",
    "DynamicViT token pruning (rho = 0.7) in BLIP-2's vision tower, from the BLIP2 checkpoint",
)
MODELS.register(
    "crossget",
    "lightning_modules.crossget_model:CrossGETRetrieval",
    "CrossGET cross-guided token merging in BLIP-2's vision tower, from the BLIP2 checkpoint",
)

DATASETS = Registry("dataset")
DATASETS.register(
    "synthetic", "datamodules.synthetic:SyntheticDataModule", "SynthScenes, the embedded procedural benchmark"
)
DATASETS.register("coco", "datamodules.coco:CocoKarpathyDataModule", "COCO, Karpathy split (local folder)")
DATASETS.register("medpix", "datamodules.medpix:MedPixDataModule", "MedPix 2.0, official case splits (local folder)")
DATASETS.register("rsicap", "datamodules.rsicap:RSICapDataModule", "RSICap, the suite's hash split (local folder)")
DATASETS.register(
    "folder",
    "datamodules.folder:FolderDataModule",
    "a user's own image-text folder: images + annotations.jsonl or .csv (image, caption, ...)",
)

#: what ``bench run --task`` evaluates (benchmark/tasks/): each entry is a class with
#: ``evaluate(context) -> TaskEvaluation``; the runner builds, trains or loads the model once for all
TASKS = Registry("task")
TASKS.register(
    "retrieval",
    "benchmark.tasks.retrieval:RetrievalTask",
    "instruction-to-image and image-to-caption retrieval (t2i, i2t, i2i directions)",
)
TASKS.register(
    "i2i",
    "benchmark.tasks.i2i:ImageToImageTask",
    "image-to-image retrieval: reference image against the gallery (relevance per dataset)",
)
TASKS.register(
    "vqa",
    "benchmark.tasks.vqa:VqaTask",
    "visual question answering: query outputs projected into a frozen causal LM, exact match",
)
TASKS.register(
    "speed",
    "benchmark.tasks.speed:SpeedTask",
    "image-encoding throughput against a baseline model, measured side by side in one process",
)
