"""The gallery's encodings on disk, so a restarted server does not encode its gallery again.

One safetensors file per (checkpoint, dataset split) under ``<cache_dir>/serve/``, named by
:func:`cache_key`: a hash of the model name, the checkpoint's identity (its folder and the
name, size and modification time of each file in it: a retrained or replaced checkpoint gets
a new key) and the evaluated split's identity (the DataModule's content identity, the split's
provenance -- annotation hash and counts -- and its image ids in order). Written batch by batch
and mapped (:mod:`benchmark.feedback.gallery_file`: temporary name, fsync, rename, so
a crash never leaves a truncated file; a gallery larger than memory stays on disk), and a file
that cannot be read is treated as absent (encoded again and replaced).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from benchmark.config import stable_hash
from benchmark.feedback.gallery_file import map_gallery, write_gallery
from lightning_modules.base import Encoded


def checkpoint_identity(checkpoint: str | Path | None) -> dict[str, Any]:
    """The checkpoint folder (or file) and each file's name, size and mtime (None: the model as configured)."""
    if not checkpoint:
        return {"checkpoint": None}
    path = Path(checkpoint)
    if not path.exists():  # a hub id
        return {"checkpoint": str(checkpoint)}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        "checkpoint": str(path.resolve()),
        "files": [[str(p.relative_to(path) if path.is_dir() else p.name), *_stat(p)] for p in files],
    }


def _stat(p: Path) -> list[int]:
    s = p.stat()
    return [s.st_size, s.st_mtime_ns]


def split_identity(image_ids: tuple[str, ...], provenance: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    ids = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
    return {"image_ids_sha256": ids, "provenance": provenance, "content": content}


def cache_key(model: str, checkpoint: dict[str, Any], split: dict[str, Any]) -> str:
    return stable_hash({"model": model, "checkpoint": checkpoint, "split": split, "format": 1})


def cache_path(cache_dir: str | Path, model: str, dataset: str, key: str) -> Path:
    return Path(cache_dir) / "serve" / f"gallery__{model}__{dataset}__{key}.safetensors"


def load_or_encode(path: Path, batches: Callable[[], Iterable[tuple[torch.Tensor, Encoded]]], n_items: int):
    """``(encodings, encoded_now)``: ``path`` mapped when readable, else ``batches()`` (the
    gallery's ``(indices, encodings)`` in index order) written there first, then mapped."""
    cached = map_gallery(path)
    if cached is not None and len(cached) == n_items:
        return cached, False
    return write_gallery(path, batches(), n_items), True
