"""The gallery's encodings on disk, so a restarted server does not encode its gallery again.

One safetensors file per (checkpoint, dataset split) under ``<cache_dir>/serve/``, named by
:func:`cache_key`: a hash of the model name, the checkpoint's identity (its folder and the
name, size and modification time of each file in it: a retrained or replaced checkpoint gets
a new key) and the evaluated split's identity (the DataModule's content identity, the split's
provenance -- annotation hash and counts -- and its image ids in order). Written through the
suite's atomic writer (temporary name, fsync, rename): a crash never leaves a truncated file,
and a file that cannot be read is treated as absent (encoded again and replaced).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from benchmark.atomic import atomic_write_bytes
from benchmark.config import stable_hash
from lightning_modules.base import Encoded

EXTRA_PREFIX = "extra."


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


def save_encoded(path: Path, encoded: Encoded) -> None:
    tensors = {"emb": encoded.emb.detach().cpu().contiguous()}
    if encoded.lengths is not None:
        tensors["lengths"] = encoded.lengths.detach().cpu().contiguous()
    for name, t in (encoded.extra or {}).items():
        tensors[EXTRA_PREFIX + name] = t.detach().cpu().contiguous()
    atomic_write_bytes(path, st_save(tensors, metadata={"format": "instructsee-serve-gallery/1"}))


def load_encoded(path: Path) -> Encoded | None:
    """The cached encodings, or None when absent or unreadable."""
    try:
        tensors = st_load(Path(path).read_bytes())
    except (OSError, SafetensorError, ValueError):
        return None
    if "emb" not in tensors:
        return None
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    try:
        return Encoded(tensors["emb"], tensors.get("lengths"), extra or None)
    except ValueError:
        return None


def load_or_encode(path: Path, encode) -> tuple[Encoded, bool]:
    """``(encodings, encoded_now)``: from ``path`` when readable, else ``encode()`` saved there."""
    cached = load_encoded(path)
    if cached is not None:
        return cached, False
    with torch.no_grad():
        encoded = encode()
    save_encoded(path, encoded)
    return encoded, True
