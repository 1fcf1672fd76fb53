"""A Hugging Face hub cache laid out as ``huggingface_hub`` reads it, for tests of hub ids."""

from __future__ import annotations

import json
from pathlib import Path


def cache_hub_config(hub: Path, repo_id: str, config: dict, revision: str = "abc123") -> Path:
    """Put ``config.json`` of ``repo_id`` into the cache folder ``hub`` (``models--org--name``
    with ``refs/main`` naming a snapshot); returns the file."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot / "config.json"
