"""Shared fixtures of the feedback tests: a tiny in-memory SynthScenes split and a fake model.

The fake model honours the RetrievalModel protocol over hand-made embeddings: a text is
the normalised count vector of the SynthScenes attributes it mentions (read with
``benchmark.feedback.scene_text``); a gallery image is the normalised vector of every
attribute of its scene plus seeded noise, so retrieval is good but imperfect and fully
deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.feedback import scene_text
from benchmark.feedback.task import FeedbackTask, from_eval_set
from datamodules.base import CaptionRecord, EvalSet, ImageRecord, InstructionTemplates, build_eval_set
from datamodules.synthetic.captions import make_captions
from datamodules.synthetic.relevance import caption_relevance
from datamodules.synthetic.scene import Scene, sample_scene
from datamodules.synthetic.vocabulary import BACKGROUND_COLOURS, BACKGROUND_PATTERNS, OBJECT_COLOURS, SHAPES, SIZES
from lightning_modules.base import Encoded, max_sim

FEATURES = (
    [f"c:{c}" for c in OBJECT_COLOURS]
    + [f"s:{s}" for s in SHAPES]
    + [f"z:{z}" for z in SIZES]
    + [f"k:{c}:{s}" for c in OBJECT_COLOURS for s in SHAPES]
    + [f"p:{p}" for p in BACKGROUND_PATTERNS]
    + [f"b:{b}" for b in BACKGROUND_COLOURS]
    + ["bias"]
)
INDEX = {f: i for i, f in enumerate(FEATURES)}


def _vector(objects: list[dict[str, str]], background: dict[str, str]) -> torch.Tensor:
    v = torch.zeros(len(FEATURES))
    v[INDEX["bias"]] = 0.5
    for o in objects:
        for key, prefix in (("colour", "c"), ("shape", "s"), ("size", "z")):
            if key in o:
                v[INDEX[f"{prefix}:{o[key]}"]] += 1
        if "colour" in o and "shape" in o:
            v[INDEX[f"k:{o['colour']}:{o['shape']}"]] += 2
    for key, prefix in (("pattern", "p"), ("colour", "b")):
        if key in background and f"{prefix}:{background[key]}" in INDEX:
            v[INDEX[f"{prefix}:{background[key]}"]] += 1
    return v


class FakeModel:
    """A RetrievalModel over attribute vectors (texts) and given gallery vectors."""

    def __init__(self) -> None:
        self.n_encoded_texts = 0

    def image_transform(self):
        return lambda image: torch.zeros(3, 4, 4)

    def encode_images(self, pixel_values: torch.Tensor) -> Encoded:
        raise NotImplementedError("the feedback tests pass the encoded gallery directly")

    def encode_texts(self, texts) -> Encoded:
        self.n_encoded_texts += len(texts)
        rows = [(lambda m: _vector(m.object_dicts(), m.background_dict()))(scene_text.read(t)) for t in texts]
        return Encoded(F.normalize(torch.stack(rows), dim=-1))

    def score(self, queries: Encoded, gallery: Encoded) -> torch.Tensor:
        return max_sim(queries, gallery)


def gallery_of(scenes: list[Scene], noise: float = 1.6, seed: int = 0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([_vector([o.to_json() for o in s.objects], s.background.to_json()) for s in scenes])
    rows = F.normalize(rows, dim=-1) + noise * torch.randn(rows.shape, generator=g) / rows.shape[1] ** 0.5
    return Encoded(F.normalize(rows, dim=-1))


def tiny_split(n: int = 40, seed: int = 0) -> tuple[EvalSet, list[ImageRecord], list[Scene]]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    captions = [make_captions(s, rng) for s in scenes]
    flat = [c for cs in captions for _, c in cs]
    relevant = caption_relevance(scenes, flat)
    ids = [f"img_{i:03d}" for i in range(n)]
    records = []
    for i, (scene, caps) in enumerate(zip(scenes, captions, strict=True)):
        records.append(
            ImageRecord(
                image_id=ids[i],
                path=Path(f"/nonexistent/{ids[i]}.png"),
                captions=tuple(CaptionRecord(c.text(), level, c.to_json()) for level, c in caps),
                metadata={"scene": scene.to_json()},
                relevant_images=tuple(tuple(ids[j] for j in relevant[5 * i + k]) for k in range(len(caps))),
            )
        )
    es = build_eval_set("test", records, InstructionTemplates(("Find images of {caption}.",)), "0" * 64)
    return es, records, scenes


def tiny_task(n: int = 40, seed: int = 0) -> tuple[FeedbackTask, Encoded]:
    es, records, scenes = tiny_split(n, seed)
    return from_eval_set(es, records), gallery_of(scenes, seed=seed)
