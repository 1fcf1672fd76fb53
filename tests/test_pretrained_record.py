"""The result file's record of a pretrained checkpoint (benchmark/pretrained_record.py): the
config's hash and shape fields, from a local folder or the Hugging Face cache."""

from __future__ import annotations

import hashlib
import json

from benchmark.pretrained_record import pretrained_record
from tests.hub_cache import cache_hub_config


def test_the_record_reads_the_checkpoint_config_from_a_folder_or_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    config = {"model_type": "blip-2", "num_query_tokens": 32, "vision_config": {"hidden_size": 1408, "x": 1}}
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    record = pretrained_record(str(folder))
    assert record == {
        "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
        "architecture": {"model_type": "blip-2", "num_query_tokens": 32, "vision_config.hidden_size": 1408},
    }
    hub = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert pretrained_record("Org/m") == {}  # not cached: nothing to record
    cache_hub_config(hub, "Org/m", config)
    assert pretrained_record("Org/m") == record
    (folder / "config.json").write_text("{truncated")
    assert set(pretrained_record(str(folder))) == {"config_sha256"}  # unreadable: its hash alone
