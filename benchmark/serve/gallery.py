"""The gallery a server searches: the evaluated split's images, encoded once, and what the
page and the question writer see of each (id, file, caption).

Built from a DataModule's evaluation set (:func:`gallery_of`) with the feedback task's own
gallery captions (:func:`benchmark.feedback.task.from_eval_set`: one stored caption per image,
``feedback.gallery_caption``), so the LLM-guided round describes shown images exactly as
``bench feedback`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.feedback.task import from_eval_set
from datamodules.base import EvalSet, ImageRecord
from lightning_modules.base import Encoded


@dataclass(frozen=True)
class Gallery:
    """``encoded[i]`` is image ``image_ids[i]`` at ``paths[i]`` (under ``root``), described by
    ``captions[i]``; ``scenes[i]`` is its SynthScenes scene graph (JSON) when recorded."""

    image_ids: tuple[str, ...]
    paths: tuple[Path, ...]
    captions: tuple[str, ...]
    root: Path
    encoded: Encoded
    scenes: tuple[dict[str, Any] | None, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if len(self.paths) != n or len(self.captions) != n or len(self.encoded) != n:
            raise ValueError(
                f"gallery: {n} ids, {len(self.paths)} paths, {len(self.captions)} captions and "
                f"{len(self.encoded)} encodings; expected one of each per image"
            )
        if self.scenes and len(self.scenes) != n:
            raise ValueError("gallery: one scene (or None) per image expected")

    def __len__(self) -> int:
        return len(self.image_ids)


def gallery_of(
    es: EvalSet, records: Sequence[ImageRecord], root: Path, encoded: Encoded, *, gallery_caption: str = "longest"
) -> Gallery:
    """The gallery of an evaluation set (``records`` in gallery order) and its encodings."""
    task = from_eval_set(es, records, gallery_caption=gallery_caption)
    scenes = tuple(r.metadata.get("scene") for r in records) if len(records) == es.n_images else ()
    return Gallery(es.image_ids, es.image_paths, task.gallery_captions, Path(root), encoded, scenes)
