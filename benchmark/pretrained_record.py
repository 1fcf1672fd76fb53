"""What a full-size run's pretrained checkpoint was, for the result file's provenance.

At full size the architecture comes from the checkpoint's ``config.json``, not from the model
config's tiny-architecture fields (``num_query_tokens``, ``qformer_hidden``, ... are recorded in
``model_config`` but ignored with ``pretrained``). :func:`pretrained_record` reads that file --
from the local folder, or from the Hugging Face cache for a hub id -- and records its SHA-256 and
the shape fields it holds, at the top level and in its sub-configs (``vision_config``,
``qformer_config``, ``text_config``), so a result says which architecture produced it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

#: the fields of a transformers config that fix a model's shapes
SHAPE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "num_query_tokens",
    "projection_dim",
    "image_text_hidden_size",
    "cross_attention_frequency",
    "max_position_embeddings",
    "vocab_size",
)
SUB_CONFIGS = ("vision_config", "qformer_config", "text_config")


def config_file(source: str) -> Path | None:
    """The ``config.json`` of a local checkpoint folder or of a cached hub id (None: neither)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        return path if path.is_file() else None
    cached = try_to_load_from_cache(source, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def pretrained_record(source: str) -> dict[str, Any]:
    """``{"config_sha256", "architecture"}`` of the checkpoint ``source`` ({} when its config
    cannot be read: the run itself would have failed to load it)."""
    path = config_file(source)
    if path is None:
        return {}
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError:
        return {"config_sha256": hashlib.sha256(raw).hexdigest()}
    architecture = {k: config[k] for k in SHAPE_FIELDS if k in config}
    for sub in SUB_CONFIGS:
        if isinstance(config.get(sub), dict):
            architecture |= {f"{sub}.{k}": config[sub][k] for k in SHAPE_FIELDS if k in config[sub]}
    return {"config_sha256": hashlib.sha256(raw).hexdigest(), "architecture": architecture}
