"""Frozen vision towers: ``tower(pixel_values) -> tokens [B, N, D]``, shared by the BLIP2 family.

A vision tower is the small interface every model of the BLIP2 family (BLIP2, BLIP2-IDQ-
Former) and the token-reduction baselines (DynamicViT, CrossGET) put in front of the
Q-Former, so that comparisons isolate what differs:

* ``tower(pixel_values)`` -- ``[B, 3, H, W]`` -> frozen visual tokens ``[B, N, D]``;
* ``hidden_size`` -- ``D``; ``transform`` -- the tower's own preprocessing
  (:class:`~lightning_modules.components.image_transform.ImageTransform`);
* ``kind`` -- a registry name; ``fingerprint()`` -- a hash of what determines the tokens
  (weights, token selection, transform), the key of the on-disk feature cache;
  ``save(directory)`` / ``TOWERS[kind].load(directory)`` -- checkpointing.

Two towers live here:

* :class:`ClipVisionTower` -- the vision transformer of a (tiny) CLIP checkpoint; all
  tokens (CLS + patches) of its last hidden state through its ``post_layernorm``. The tiny
  BLIP2 family all sit on the vision tower of the tiny CLIP trained on the same data.
* :class:`Blip2VisionTower` -- transformers' ``Blip2VisionModel`` (EVA ViT-g of
  ``Salesforce/blip2-itm-vit-g``); its last hidden state is already post-layer-normed, as
  ``Blip2ForImageTextRetrieval`` feeds it to the Q-Former.

Towers are frozen (``requires_grad_(False)``, kept in eval mode by their owner).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    Blip2ForImageTextRetrieval,
    Blip2VisionModel,
    CLIPImageProcessor,
    CLIPVisionModel,
)
from transformers.utils import logging as hf_logging

from lightning_modules.components.image_transform import ImageTransform

TOWER_FILE = "tower.json"


@runtime_checkable
class VisionTower(Protocol):
    kind: str
    transform: ImageTransform

    @property
    def hidden_size(self) -> int: ...

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def fingerprint(self) -> str: ...

    def save(self, directory: Path) -> None: ...


def state_fingerprint(module: nn.Module, *extra: object) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state, plus ``extra`` values.

    Content-based, so a tower re-saved elsewhere (e.g. copied into a suite checkpoint) keeps
    its fingerprint, and any change of a weight changes it.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for e in extra:
        h.update(json.dumps(e, sort_keys=True, default=str).encode())
    return h.hexdigest()


class _HFTower(nn.Module):
    """Common part: a frozen transformers vision model, its transform, save/load and fingerprint."""

    kind = ""
    model_cls: type = nn.Module

    def __init__(self, model, transform: ImageTransform, source: str | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.transform = transform
        #: the checkpoint (hub id or folder) the frozen weights were read from, if known: a
        #: suite checkpoint then stores a reference to it instead of a copy (:func:`save_tower`)
        self.source = source
        self._fingerprint: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> _HFTower:  # frozen: always in eval mode (no dropout)
        return super().train(False)

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # frozen weights: computed once
            self._fingerprint = state_fingerprint(self.model, self.kind, asdict(self.transform))
        return self._fingerprint

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)  # safetensors
        (directory / TOWER_FILE).write_text(json.dumps({"kind": self.kind, "transform": asdict(self.transform)}))

    @classmethod
    def load(cls, directory: Path) -> _HFTower:
        meta = json.loads((Path(directory) / TOWER_FILE).read_text())
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["transform"].items()}
        transform = ImageTransform(**fields)
        return cls(load_strict(cls.model_cls, directory), transform)


class ClipVisionTower(_HFTower):
    """All tokens of a CLIP vision transformer's last hidden state, through its post_layernorm."""

    kind = "clip"
    model_cls = CLIPVisionModel

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = getattr(self.model, "vision_model", self.model)  # transformers v4 nests it, v5 does not
        out = vm(pixel_values=pixel_values.to(vm.embeddings.patch_embedding.weight.device))
        return vm.post_layernorm(out.last_hidden_state)

    @classmethod
    def from_clip_checkpoint(cls, path: str | Path, local_files_only: bool = True) -> ClipVisionTower:
        """The vision half of a CLIP checkpoint (a suite CLIP checkpoint or a hub-style folder)."""
        model = load_strict(
            CLIPVisionModel,
            path,
            ignore_prefixes=("text_model.", "text_projection.", "logit_scale", "visual_projection."),
            local_files_only=local_files_only,
        )
        try:
            transform = ImageTransform.from_hf_processor(
                CLIPImageProcessor.from_pretrained(path, local_files_only=local_files_only)
            )
        except OSError:  # suite checkpoints carry no processor file: CLIP's tiny transform
            size = model.config.image_size
            transform = ImageTransform(size, size)
        return cls(model, transform, source=str(path))

    @classmethod
    def from_source(cls, source: str, local_files_only: bool = True) -> ClipVisionTower:
        return cls.from_clip_checkpoint(source, local_files_only)


class Blip2VisionTower(_HFTower):
    """transformers' ``Blip2VisionModel``: its last hidden state (already post-layer-normed)."""

    kind = "blip2"
    model_cls = Blip2VisionModel

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.model.embeddings.patch_embedding.weight
        return self.model(pixel_values=pixel_values.to(device=emb.device, dtype=emb.dtype)).last_hidden_state

    @classmethod
    def from_source(cls, source: str, local_files_only: bool = True) -> Blip2VisionTower:
        """The vision model of a ``Blip2ForImageTextRetrieval`` checkpoint, with its image processor."""
        hf = load_strict(Blip2ForImageTextRetrieval, source, local_files_only=local_files_only, dtype=torch.float32)
        transform = ImageTransform.from_hf_processor(
            AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only)
        )
        return cls(hf.vision_model, transform, source=source)


#: tower kinds by name, for loading a saved tower (token-reduction towers register here too)
TOWERS: dict[str, type[ClipVisionTower | Blip2VisionTower]] = {
    ClipVisionTower.kind: ClipVisionTower,
    Blip2VisionTower.kind: Blip2VisionTower,
}


def load_tower(directory: Path) -> VisionTower:
    kind = json.loads((Path(directory) / TOWER_FILE).read_text())["kind"]
    if kind not in TOWERS:
        raise ValueError(f"{directory}: unknown vision tower kind {kind!r}; known: {', '.join(sorted(TOWERS))}")
    return TOWERS[kind].load(directory)


# -- frozen towers by reference ------------------------------------------------------------
#: a suite checkpoint's reference to its frozen tower (instead of a copy of its weights)
TOWER_REFERENCE = "vision_tower.json"


def save_tower(tower: VisionTower, checkpoint: Path, folder: str) -> None:
    """Save ``tower`` with a suite checkpoint: a frozen tower read from a known checkpoint
    (``tower.source``: a hub id or a folder) is stored as a reference to it -- its kind, source
    and content fingerprint -- in ``checkpoint/vision_tower.json`` (the 3.9 GB ViT-g is not copied
    into every trained checkpoint); any other tower is saved whole into ``checkpoint/folder``."""
    source = getattr(tower, "source", None)
    if source is None or tower.kind not in TOWERS or not hasattr(TOWERS[tower.kind], "from_source"):
        tower.save(Path(checkpoint) / folder)
        return
    reference = {"kind": tower.kind, "source": source, "fingerprint": tower.fingerprint()}
    Path(checkpoint).mkdir(parents=True, exist_ok=True)
    (Path(checkpoint) / TOWER_REFERENCE).write_text(json.dumps(reference, indent=2))


def load_saved_tower(checkpoint: Path, folder: str, local_files_only: bool = True) -> VisionTower:
    """The tower :func:`save_tower` stored: loaded from ``checkpoint/folder``, or rebuilt from its
    referenced source and checked against the recorded fingerprint (a changed or missing base is
    an error that names it, never a silently different model)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / folder).is_dir():
        return load_tower(checkpoint / folder)
    ref_file = checkpoint / TOWER_REFERENCE
    if not ref_file.is_file():
        raise LoadingError(
            f"{checkpoint}: holds neither a vision tower folder ({folder}/) nor a reference to one ({TOWER_REFERENCE})"
        )
    ref = json.loads(ref_file.read_text())
    if ref.get("kind") not in TOWERS or not hasattr(TOWERS[ref["kind"]], "from_source"):
        raise LoadingError(f"{ref_file}: unknown referenced tower kind {ref.get('kind')!r}")
    try:
        tower = TOWERS[ref["kind"]].from_source(ref["source"], local_files_only)
    except (OSError, LoadingError, ValueError) as e:
        raise LoadingError(
            f"{ref_file}: the frozen vision tower it references ({ref['source']}) cannot be loaded: {e}"
        ) from e
    if tower.fingerprint() != ref["fingerprint"]:
        raise LoadingError(
            f"{ref_file}: the frozen vision tower at {ref['source']} is not the one this checkpoint "
            f"was trained on (fingerprint {tower.fingerprint()[:12]}..., recorded "
            f"{ref['fingerprint'][:12]}...)"
        )
    return tower


class LoadingError(RuntimeError):
    """A checkpoint whose weights do not match the model exactly (missing, unused or mis-shaped)."""


def load_strict(model_cls, path: str | Path, ignore_prefixes: tuple[str, ...] = (), **kwargs):
    """``model_cls.from_pretrained(path)`` that refuses missing, unexpected or mis-shaped weights.

    ``ignore_prefixes`` names checkpoint weights that are deliberately left out (e.g. the
    text half of a CLIP checkpoint when only its vision tower is wanted).
    """
    kwargs.setdefault("local_files_only", True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report is replaced by the check below
    try:
        model, info = model_cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(ignore_prefixes)]
    problems = {
        "missing": sorted(info.get("missing_keys", [])),
        "unused": sorted(unexpected),
        "mismatched": sorted(str(m) for m in info.get("mismatched_keys", [])),
    }
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise LoadingError(f"{path}: weights of {model_cls.__name__} do not match the checkpoint: {problems}")
    return model
