"""The gallery file of ``bench feedback`` and ``bench serve``: written batch by batch, mapped
read-only, equal to the encodings it was written from, readable by safetensors, atomic, and
refusing batches that do not make one gallery."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.atomic import HOST
from benchmark.feedback.gallery_file import (
    GalleryFileError,
    map_gallery,
    place,
    row_bytes,
    scratch_gallery,
    write_gallery,
)
from lightning_modules.base import Encoded
from lightning_modules.components.feature_cache import CacheSpaceError


def _gallery(n: int = 11) -> Encoded:
    g = torch.Generator().manual_seed(0)
    return Encoded(
        torch.randn(n, 4, 8, generator=g),
        torch.randint(1, 5, (n,), generator=g),
        {
            "tokens": torch.randn(n, 3, 5, generator=g).half(),
            "mask": torch.rand(n, 3, generator=g) > 0.5,
            "bf": torch.randn(n, 7, generator=g).bfloat16(),
        },
    )


def _batches(enc: Encoded, size: int):
    for lo in range(0, len(enc), size):
        idx = torch.arange(lo, min(lo + size, len(enc)))
        yield idx, enc[idx]


def _same(a: Encoded, b: Encoded) -> None:
    assert torch.equal(a.emb, b.emb) and a.emb.dtype == b.emb.dtype
    assert (a.lengths is None) == (b.lengths is None)
    if a.lengths is not None:
        assert torch.equal(a.lengths, b.lengths)
    assert set(a.extra or {}) == set(b.extra or {})
    for k, v in (a.extra or {}).items():
        assert v.dtype == b.extra[k].dtype and torch.equal(v, b.extra[k]), k


@pytest.mark.parametrize("size", [1, 4, 11])
def test_written_batch_by_batch_and_mapped_equal_the_encodings(tmp_path, size):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    write_gallery(path, _batches(enc, size), len(enc))
    mapped = map_gallery(path)
    assert mapped is not None
    _same(enc, mapped)
    assert path.stat().st_size >= len(enc) * row_bytes(enc)
    plain = load_file(path)  # plain safetensors
    assert torch.equal(plain["emb"], enc.emb) and torch.equal(plain["extra.tokens"], enc.extra["tokens"])
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]
    no_extra = Encoded(enc.emb)
    write_gallery(path, _batches(no_extra, 5), len(enc))  # replaces it
    _same(no_extra, map_gallery(path))


def test_place_moves_a_small_gallery_and_leaves_a_large_one_mapped(tmp_path):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    write_gallery(path, _batches(enc, 4), len(enc))
    mapped = map_gallery(path)
    total = len(enc) * row_bytes(enc)
    kept = place(mapped, "meta", total)
    assert kept.emb.data_ptr() == mapped.emb.data_ptr() and all(t.device.type == "cpu" for t in kept.extra.values())
    moved = place(mapped, "meta", total + 1)
    assert moved.emb.device.type == "meta" and all(t.device.type == "meta" for t in moved.extra.values())


@pytest.mark.parametrize(
    "batches, message",
    [
        (lambda e: [(torch.arange(0, 4), e[:4]), (torch.arange(5, 11), e[5:])], "index order from 4"),
        (lambda e: [(torch.arange(0, 11), e), (torch.arange(11, 12), e[:1])], "more than the 11"),
        (lambda e: [(torch.arange(0, 4), e[:4])], "4 items encoded, 11 expected"),
        (lambda e: [], "0 items encoded"),
        (
            lambda e: [(torch.arange(0, 4), e[:4]), (torch.arange(4, 11), Encoded(e.emb[4:].half()))],
            "fields",
        ),
        (
            lambda e: [(torch.arange(0, 4), Encoded(e.emb[:4])), (torch.arange(4, 11), Encoded(e.emb[4:].half()))],
            "field 'emb' is torch.float16",
        ),
    ],
)
def test_bad_batches_are_refused_and_leave_the_old_file(tmp_path, batches, message):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    write_gallery(path, _batches(enc, 11), len(enc))
    before = path.read_bytes()
    with pytest.raises(GalleryFileError, match=message):
        write_gallery(path, batches(enc), len(enc))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    enc = _gallery()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(CacheSpaceError, match="gallery encodings "):
        write_gallery(tmp_path / "g.safetensors", _batches(enc, 4), len(enc))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CacheSpaceError, match="or raise eval.memmap_min_mb"):
        scratch_gallery(tmp_path / "g.safetensors", _batches(enc, 4), len(enc), remedy="raise eval.memmap_min_mb")
    assert list(tmp_path.iterdir()) == []


def test_truncated_corrupt_or_foreign_files_are_absent(tmp_path):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    assert map_gallery(path) is None
    write_gallery(path, _batches(enc, 4), len(enc))
    good = path.read_bytes()
    for bad in (good[:-1], good[:6], b"\xff" * 64, good[:8] + b"{not json" + good[17:]):
        path.write_bytes(bad)
        assert map_gallery(path) is None
    deep = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(len(deep).to_bytes(8, "little") + deep)
    assert map_gallery(path) is None


def _with_header(path, edit) -> None:
    """Rewrite the file's header through ``edit(header dict)``, keeping the data after it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n, "the edited header must fit the old one"
    path.write_bytes(raw[:8] + text + raw[8 + n :])


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["__metadata__"].update(format="someone-else/1"),
        lambda h: h.pop("__metadata__"),
        lambda h: h["lengths"].update(dtype="F32"),
        lambda h: h["emb"].update(dtype="I32"),
        lambda h: h["emb"]["shape"].__setitem__(0, True),
        lambda h: h["emb"]["data_offsets"].__setitem__(0, 0.0),
        lambda h: h["extra.mask"].update(data_offsets=[h["emb"]["data_offsets"][0], h["emb"]["data_offsets"][0] + 33]),
        lambda h: h["extra.mask"]["shape"].__setitem__(0, 10),
        lambda h: h.pop("emb"),
    ],
    ids=[
        "format",
        "no-metadata",
        "float-lengths",
        "int-emb",
        "bool-shape",
        "float-offset",
        "overlap",
        "count",
        "no-emb",
    ],
)
def test_headers_that_are_not_our_gallery_are_refused(tmp_path, edit):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    write_gallery(path, _batches(enc, 4), len(enc))
    assert map_gallery(path) is not None
    _with_header(path, edit)
    assert map_gallery(path) is None


def test_a_plain_safetensors_file_with_our_names_and_format_maps(tmp_path):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    tensors = {"emb": enc.emb, "lengths": enc.lengths} | {f"extra.{k}": v for k, v in enc.extra.items()}
    save_file(tensors, path, metadata={"format": "instructsee-serve-gallery/1"})  # the former serve cache
    _same(enc, map_gallery(path))


def test_an_empty_batch_is_skipped_over(tmp_path):
    enc = _gallery()
    path = tmp_path / "g.safetensors"
    batches = [(torch.arange(0, 4), enc[:4]), (torch.arange(4, 4), enc[4:4]), (torch.arange(4, 11), enc[4:])]
    write_gallery(path, batches, len(enc))
    _same(enc, map_gallery(path))


def test_scratch_gallery_is_mapped_and_leaves_nothing_on_disk(tmp_path):
    enc = _gallery()
    target = tmp_path / "spill" / "feedback-gallery.safetensors"
    target.parent.mkdir()
    leftover = target.parent / f".{target.name}.tmp-{HOST}-999999999-0123abcd"  # a dead process's
    leftover.write_bytes(b"partial")
    mapped = scratch_gallery(target, _batches(enc, 3), len(enc))
    _same(enc, mapped)
    assert list(target.parent.iterdir()) == []
    with pytest.raises(GalleryFileError):
        scratch_gallery(target, _batches(enc, 3), len(enc) + 1)
    assert list(target.parent.iterdir()) == []


def test_short_pwrites_are_continued(tmp_path, monkeypatch):
    """``pwrite`` may write less than asked (over ~2 GiB per call): every byte still lands."""
    real = os.pwrite
    calls = []

    def short(fd, data, offset):
        calls.append(offset)
        return real(fd, bytes(memoryview(data)[:1000]), offset)

    monkeypatch.setattr(os, "pwrite", short)
    enc = _gallery(40)
    path = tmp_path / "g.safetensors"
    write_gallery(path, _batches(enc, 16), len(enc))
    monkeypatch.setattr(os, "pwrite", real)
    _same(enc, map_gallery(path))
    assert len(calls) > 20
