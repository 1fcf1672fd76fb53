"""On-disk cache of frozen vision features, per (vision tower, dataset split).

A frozen tower gives the same tokens for the same image every time, so the BLIP2 family
(and its ablations, and repeated runs) compute them once: the first use of a split runs
the tower over every image of the split and writes one safetensors file,
``<root>/<key>.safetensors`` holding ``features [n_images, N, D]``, where ``key`` is a
hash of the tower's fingerprint (weights, token selection, transform -- see
:func:`~lightning_modules.components.vision_tower.state_fingerprint`), the split's name,
its number of images and its annotation checksum. Files are written to a temporary file in
the same folder and renamed into place, so concurrent or interrupted runs never see a
half-written file. Any change of the weights, the transform or the annotations gives a new
key (old files are simply no longer used).

:class:`FeatureCache` is the DataModule's *item loader* (``RetrievalDataModule.
set_item_loader``): ``for_split(split, n, checksum, pixels)`` returns ``i -> tokens [N, D]``
in place of ``i -> pixels [3, H, W]``; the model recognises tokens by their rank (3 dims
per batch instead of 4). It records how long each extraction took (``timings``) and
which files it used (``provenance``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lightning_modules.components.vision_tower import VisionTower

FORMAT_VERSION = 1


def feature_key(tower_fingerprint: str, split: str, n_images: int, checksum: str) -> str:
    payload = {"v": FORMAT_VERSION, "tower": tower_fingerprint, "split": split, "n": n_images, "annotations": checksum}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureCache:
    """Frozen tower features of whole splits, computed once and stored under ``root``.

    Args:
        tower: the frozen vision tower.
        root: cache folder (e.g. ``<cache>/features``).
        batch_size: images per tower call while extracting.
        dtype: storage dtype (float32 default; float16 halves the disk and memory of big towers).
    """

    def __init__(self, tower: VisionTower, root: Path, batch_size: int = 256, dtype: torch.dtype = torch.float32):
        self.tower = tower
        self.root = Path(root)
        self.batch_size = batch_size
        self.dtype = dtype
        self.timings: dict[str, float] = {}
        self.provenance: dict[str, dict] = {}
        self._memory: dict[str, torch.Tensor] = {}

    def path(self, split: str, n_images: int, checksum: str) -> Path:
        return self.root / f"{feature_key(self.tower.fingerprint(), split, n_images, checksum)}.safetensors"

    def features(self, split: str, n_images: int, checksum: str, pixels: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``[n_images, N, D]`` tokens of a split: from memory, from disk, or computed now and stored."""
        path = self.path(split, n_images, checksum)
        key = str(path)
        if key in self._memory:
            return self._memory[key]
        if path.exists():
            t = time.perf_counter()
            feats = load_file(path)["features"]
            self.timings[f"features_{split}_load_s"] = time.perf_counter() - t
            self.provenance[split] = {"file": str(path), "hit": True}
        else:
            t = time.perf_counter()
            feats = self.extract(n_images, pixels)
            self.timings[f"features_{split}_extract_s"] = time.perf_counter() - t
            _atomic_save({"features": feats.contiguous()}, path, {"split": split, "n_images": str(n_images),
                                                                 "annotations_sha256": checksum,
                                                                 "tower": self.tower.fingerprint()})
            self.provenance[split] = {"file": str(path), "hit": False}
        if feats.shape[0] != n_images:
            raise ValueError(f"{path}: holds {feats.shape[0]} items, expected {n_images}")
        self._memory[key] = feats
        return feats

    @torch.no_grad()
    def extract(self, n_images: int, pixels: Callable[[int], torch.Tensor]) -> torch.Tensor:
        out = []
        for start in range(0, n_images, self.batch_size):
            batch = torch.stack([pixels(i) for i in range(start, min(start + self.batch_size, n_images))])
            out.append(self.tower(batch).to(device="cpu", dtype=self.dtype))
        return torch.cat(out)

    # -- the DataModule's item-loader interface ------------------------------------------
    def for_split(self, split: str, n_images: int, checksum: str,
                  pixels: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
        feats = self.features(split, n_images, checksum, pixels)
        return feats.__getitem__
