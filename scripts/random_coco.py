"""A stand-in for COCO-Karpathy at full size, written offline in Karpathy's exact format.

For GPU checks of the full-size evaluation (``scripts/gpu_eval.py``), where the real COCO
images cannot be downloaded: ``<root>/dataset_coco.json`` (``{"images": [...], "dataset":
"coco"}``, each image with ``filepath``, ``filename`` ``COCO_val2014_<12-digit id>.jpg``,
``imgid``, ``cocoid``, ``split``, ``sentids``, ``sentences`` of ``{tokens, raw, imgid,
sentid}``; ``raw`` of every other sentence ends in a space, as in Karpathy's file) and the
JPEGs under ``<root>/val2014/`` (test, val, restval) and ``<root>/train2014/`` (train), as
``datamodules/coco.py`` reads them. The test split has the real one's size (5,000 images,
5 captions each: 25,000 queries); train, restval and val hold a few images only (the
evaluation reads the train captions for the vocabulary, nothing else).

Images: ``image_size`` px square JPEGs (the models' transforms resize them anyway), each a
seeded colour gradient with a few filled rectangles and ellipses and some noise, so they
decode like photos and differ from each other; written by ``workers`` processes. Captions:
seeded sentences of 7 to 17 words ("a large red dog sitting next to a small wooden bench in
a park"), about the length of COCO's (10.5 words on average). Everything depends on
``seed`` only, not on the number of workers.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DETERMINERS = ("a", "the", "one", "two", "some", "an old", "a young", "several")
ADJECTIVES = (
    "large",
    "small",
    "red",
    "blue",
    "green",
    "white",
    "black",
    "wooden",
    "yellow",
    "shiny",
    "tall",
    "striped",
    "empty",
    "crowded",
    "brown",
    "tiny",
    "colorful",
    "metal",
    "old",
    "new",
)
NOUNS = (
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "bus",
    "train",
    "bicycle",
    "horse",
    "plate",
    "table",
    "kitchen",
    "pizza",
    "surfboard",
    "elephant",
    "giraffe",
    "umbrella",
    "bench",
    "clock",
    "boat",
    "car",
    "bird",
    "sofa",
    "laptop",
    "vase",
    "street",
    "field",
    "beach",
    "skateboard",
    "bear",
    "truck",
    "sandwich",
    "kite",
    "sheep",
)
VERBS = ("sitting", "standing", "walking", "parked", "riding", "lying", "running", "resting", "playing", "waiting")
PREPOSITIONS = ("next to", "on top of", "in front of", "near", "behind", "under", "beside", "across from", "inside")
PLACES = (
    "in a park",
    "on a busy street",
    "at the beach",
    "in a kitchen",
    "on a sunny day",
    "in the snow",
    "near the water",
    "in a living room",
    "at night",
    "in a field",
)
#: every word a caption can hold (a tokenizer built from them knows them all)
WORDS = tuple(
    dict.fromkeys(
        w
        for group in (DETERMINERS, ADJECTIVES, NOUNS, VERBS, PREPOSITIONS, PLACES)
        for phrase in group
        for w in phrase.split()
    )
)


@dataclass(frozen=True)
class CocoSpec:
    """What to write: images per Karpathy split, captions per image, JPEG size and quality, seed."""

    n_test: int = 5000
    n_val: int = 5
    n_train: int = 5
    n_restval: int = 2
    captions_per_image: int = 5
    image_size: int = 256
    quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_test", "n_val", "n_train", "captions_per_image"):
            if not 1 <= getattr(self, name) <= 1_000_000:
                raise ValueError(f"{name} must be in [1, 1000000], got {getattr(self, name)}")
        if not 0 <= self.n_restval <= 1_000_000:
            raise ValueError(f"n_restval must be in [0, 1000000], got {self.n_restval}")
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [16, 4096] px, got {self.image_size}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"quality must be in [1, 95] (PIL's JPEG range), got {self.quality}")

    def splits(self) -> dict[str, int]:
        return {"test": self.n_test, "val": self.n_val, "train": self.n_train, "restval": self.n_restval}


def caption(rng: np.random.Generator) -> str:
    """One sentence of 7 to 17 words (11.2 on average)."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    words = [pick(DETERMINERS)]
    if rng.random() < 0.7:
        words.append(pick(ADJECTIVES))
    words += [pick(ADJECTIVES), pick(NOUNS), pick(VERBS), pick(PREPOSITIONS), pick(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(pick(ADJECTIVES))
    words.append(pick(NOUNS))
    if rng.random() < 0.6:
        words.append(pick(PLACES))
    return " ".join(words)


def image(size: int, seed: int) -> Image.Image:
    """A seeded gradient with a few filled shapes and noise (decodes like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    vertical = rng.random() < 0.5
    t = ramp[:, None, None] if vertical else ramp[None, :, None]
    arr = np.broadcast_to(start + (end - start) * t, (size, size, 3))
    arr = arr + rng.normal(0, 4, (size, size, 1)).astype(np.float32)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2, 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    return im


def file_name(split: str, cocoid: int) -> tuple[str, str]:
    """``(filepath, filename)`` of an image, as Karpathy's file names them."""
    folder = "train2014" if split == "train" else "val2014"
    return folder, f"COCO_{folder}_{cocoid:012d}.jpg"


def _entries(spec: CocoSpec) -> list[dict]:
    """The ``images`` list of ``dataset_coco.json`` (captions drawn from one seeded stream)."""
    rng = np.random.default_rng(spec.seed)
    images, sentid, imgid = [], 0, 0
    for split, n in spec.splits().items():
        for _ in range(n):
            cocoid = 100_000 + 7 * imgid  # distinct, 12-digit zero-padded in the name as COCO's
            filepath, filename = file_name(split, cocoid)
            sentences = []
            for _ in range(spec.captions_per_image):
                text = caption(rng)
                raw = text + " " if sentid % 2 == 0 else text  # Karpathy's raw often ends in a space
                sentences.append({"tokens": text.split(), "raw": raw, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append(
                {
                    "filepath": filepath,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": cocoid,
                }
            )
            imgid += 1
    return images


def _write_images(job: tuple[str, list[tuple[str, int]], int, int]) -> int:
    root, items, size, quality = job
    for rel, seed in items:
        path = Path(root) / rel
        tmp = path.with_name(f".{path.name}.tmp")
        image(size, seed).save(tmp, "JPEG", quality=quality)
        os.replace(tmp, path)  # an interrupted run never leaves a truncated JPEG under the real name
    return len(items)


def write_coco(root: Path, spec: CocoSpec = CocoSpec(), workers: int | None = None) -> dict:
    """Write the folder; returns counts, sizes and timings (``images_s``, ``annotations_s``)."""
    root = Path(root)
    workers = max(1, workers or os.cpu_count() or 1)
    t = time.perf_counter()
    entries = _entries(spec)
    for folder in ("train2014", "val2014"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    annotations_s = time.perf_counter() - t
    t = time.perf_counter()
    items = [(f"{e['filepath']}/{e['filename']}", spec.seed * 1_000_003 + e["cocoid"]) for e in entries]
    chunk = max(1, -(-len(items) // (4 * workers)))
    jobs = [(str(root), items[i : i + chunk], spec.image_size, spec.quality) for i in range(0, len(items), chunk)]
    if workers == 1:
        written = sum(map(_write_images, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            written = sum(pool.map(_write_images, jobs))
    images_s = time.perf_counter() - t
    t = time.perf_counter()
    doc = json.dumps({"images": entries, "dataset": "coco"})
    tmp = root / ".dataset_coco.json.tmp"
    tmp.write_text(doc)
    os.replace(tmp, root / "dataset_coco.json")  # written last: its presence means the folder is complete
    annotations_s += time.perf_counter() - t
    per_split = {s: sum(1 for e in entries if e["split"] == s) for s in spec.splits()}
    return {
        "spec": asdict(spec),
        "workers": workers,
        "images": written,
        "per_split": per_split,
        "test_captions": spec.n_test * spec.captions_per_image,
        "images_s": images_s,
        "annotations_s": annotations_s,
        "bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
    }


def vocabulary() -> list[str]:
    """Texts that hold every word of the instructions the evaluation builds: the caption words
    and the COCO instruction templates (for the word tokenizer of a random checkpoint)."""
    # lazy: the module stays torch-free for its image-writing pool workers; datamodules pulls in torch
    from datamodules.coco import CocoKarpathyDataModule

    return [" ".join(WORDS), *(t.replace("{caption}", "") for t in CocoKarpathyDataModule.default_templates)]
