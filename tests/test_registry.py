"""Registries: every entry resolves, duplicates are refused, unknown names list the valid ones."""

from __future__ import annotations

import pytest

from benchmark.registry import DATASETS, MODELS, Registry, UnknownNameError


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_resolves_and_has_the_contract(name):
    cls = MODELS.get(name)
    for attr in ("Config", "create", "load_checkpoint", "save_checkpoint"):
        assert hasattr(cls, attr), f"{name} lacks {attr}"
    for attr in ("image_transform", "encode_images", "encode_texts", "score"):
        assert callable(getattr(cls, attr)), f"{name} lacks {attr} of the RetrievalModel protocol"


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_resolves(name):
    cls = DATASETS.get(name)
    assert cls.name == name
    assert hasattr(cls, "read_split") and hasattr(cls, "prepare_data")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        MODELS.get("clipp")
    assert "unknown model 'clipp'" in str(e.value) and "clip" in str(e.value)


def test_duplicates_refused():
    r = Registry("thing")
    r.register("a", "x:y")
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", "x:z")
    with pytest.raises(ValueError, match="module:attribute"):
        r.register("b", "nocolon")
