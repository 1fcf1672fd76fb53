"""Shared test set-up: never touch the network, keep threads and outputs small."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, so nothing leaks between tests or from the user."""
    monkeypatch.setenv("INSTRUCTSEE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INSTRUCTSEE_DATA_ROOT", raising=False)
