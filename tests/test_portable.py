"""Machine paths leave recorded files: benchmark/portable.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmark.portable import portable, portable_path, resolve


def test_paths_under_roots_become_relative_and_resolve_back(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    roots = {"cache": cache, "data": cache / "data", "results": tmp_path / "out"}
    record = {
        "config": {"cache_dir": str(cache), "results_dir": str(tmp_path / "out"), "seed": 3},
        "provenance": {
            "checkpoint": str(cache / "checkpoints" / "ours__x"),
            "data_root": str(cache / "data"),
            "files": [str(cache / "data" / "a.png"), "relative/b.png"],
        },
        "model": "ours",
    }
    out = portable(record, roots)
    assert out["config"] == {"cache_dir": "<cache>", "results_dir": "<results>", "seed": 3}
    assert out["provenance"]["checkpoint"] == "<cache>/checkpoints/ours__x"
    assert out["provenance"]["data_root"] == "<data>"  # the most specific root wins
    assert out["provenance"]["files"] == ["<data>/a.png", "relative/b.png"]
    assert str(tmp_path) not in repr(out)
    assert resolve(out["provenance"]["checkpoint"], roots) == cache / "checkpoints" / "ours__x"


def test_paths_outside_every_root_are_hashed_not_kept(tmp_path: Path) -> None:
    a = portable_path("/models/secret-team/blip2", {"cache": tmp_path})
    b = portable_path("/models/other/blip2", {"cache": tmp_path})
    assert a.startswith("<external>/blip2#") and b.startswith("<external>/blip2#") and a != b
    assert "secret-team" not in a
    with pytest.raises(ValueError, match="no root named <external>"):
        resolve(a, {"cache": tmp_path})


def test_a_prefix_that_is_not_a_parent_is_not_a_root(tmp_path: Path) -> None:
    assert portable_path(str(tmp_path / "cache-old" / "x"), {"cache": tmp_path / "cache"}).startswith("<external>/")


def test_resolve_refuses_escapes_and_unknown_roots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leaves its root"):
        resolve("<cache>/../etc/passwd", {"cache": tmp_path})
    with pytest.raises(ValueError, match="no root named <data>"):
        resolve("<data>/x", {"cache": tmp_path})
    assert resolve("plain/relative", {}) == Path("plain/relative")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    )
)
def test_non_path_values_are_unchanged(obj: object) -> None:
    def has_abs(o: object) -> bool:
        if isinstance(o, str):
            return o.startswith("/")
        if isinstance(o, dict):
            return any(has_abs(v) for v in o.values())
        if isinstance(o, list):
            return any(has_abs(v) for v in o)
        return False

    if not has_abs(obj):
        assert portable(obj, {"cache": "/tmp/x"}) == obj
