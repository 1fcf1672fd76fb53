"""The cached image check (datamodules/image_checks.py) on the real-format fixtures: checked
once, then read from the cache without opening an image; a touched, corrupted or removed
image is checked (or reported) again; --strict and ``bench data check`` keep their meaning;
the check runs in ``prepare_data`` for the splits of the stage and ``setup`` reads it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import datamodules.base as base
from benchmark.cli import app
from datamodules.base import DataError
from datamodules.coco import CocoKarpathyDataModule
from datamodules.datamodule import DataConfig
from datamodules.image_checks import CHECK_VERSION, ImageCheckCache, check_images, check_threads
from datamodules.medpix import MedPixDataModule
from datamodules.rsicap import RSICapDataModule
from tests.fixtures_real import write_coco_karpathy, write_medpix, write_rsicap

WRITERS = {
    "coco": (write_coco_karpathy, CocoKarpathyDataModule),
    "medpix": (write_medpix, MedPixDataModule),
    "rsicap": (write_rsicap, RSICapDataModule),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    base_dir = tmp_path_factory.mktemp("real")
    for name, (write, _) in WRITERS.items():
        write(base_dir / name)
    return {name: base_dir / name for name in WRITERS}


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every image ``check_image`` opens (it still does its work)."""
    calls: list[Path] = []
    real = base.check_image

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(base, "check_image", counting)
    return calls


def make(name: str, root: Path, cache: Path | None, **kw):
    dm = WRITERS[name][1](DataConfig(root=str(root), **kw))
    dm.set_check_cache(cache)
    return dm


def all_records(dm) -> dict[str, list]:
    return {s: dm.records(s) for s in ("train", "val", "test")}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_checked_once_then_read_from_the_cache(pristine, tmp_path, opened, name):
    root = tmp_path / name
    shutil.copytree(pristine[name], root)
    cache = tmp_path / "cache" / "image_checks"
    first = all_records(make(name, root, cache))
    n_images = len({r.path for recs in first.values() for r in recs})
    assert len(opened) == n_images > 0  # each image of the three splits decoded once
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    doc = json.loads(files[0].read_text())
    assert doc["version"] == CHECK_VERSION and doc["dataset"] == name and len(doc["entries"]) == n_images
    assert all(not Path(k).is_absolute() for k in doc["entries"])  # relative to the data root
    opened.clear()
    again = all_records(make(name, root, cache))
    assert opened == [] and again == first  # a second run opens no image and keeps the same records
    # without a cache every image is decoded again
    assert all_records(make(name, root, None)) == first and len(opened) == n_images


def test_changed_images_are_checked_again_and_missing_ones_always_reported(pristine, tmp_path, opened):
    root = tmp_path / "coco"
    shutil.copytree(pristine["coco"], root)
    cache = tmp_path / "image_checks"
    test = make("coco", root, cache).records("test")
    touched, corrupted, removed = (r.path for r in test[:3])
    opened.clear()
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
    data = corrupted.read_bytes()
    corrupted.write_bytes(data[: len(data) // 2])  # truncated: the size changes
    removed.unlink()
    d = make("coco", root, cache)
    kept = d.records("test")
    assert sorted(opened) == sorted([touched, corrupted])  # only the changed files are opened
    skipped = {Path(s["path"]): s["reason"] for s in d.skipped()}
    assert skipped[removed] == "missing" and skipped[corrupted].startswith("unreadable")
    assert touched not in skipped and len(kept) == len(test) - 2
    opened.clear()
    d2 = make("coco", root, cache)  # the next run: only the unreadable image is opened again (never cached)
    assert d2.records("test") == kept and d2.skipped() == d.skipped() and opened == [corrupted]
    with pytest.raises(DataError, match="2 of 5 images of split 'test' are missing or unreadable.*strict"):
        make("coco", root, cache, strict=True).records("test")
    corrupted.write_bytes(data)  # repaired: readable again on the next run
    assert len(make("coco", root, cache).records("test")) == len(test) - 1


def test_skipped_listing_is_the_same_with_and_without_the_cache(pristine, tmp_path):
    root = tmp_path / "medpix"
    shutil.copytree(pristine["medpix"], root)
    images = sorted((root / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:60])
    listings = []
    for cache in (None, tmp_path / "c", tmp_path / "c"):  # no cache, cold cache, warm cache
        d = make("medpix", root, cache)
        all_records(d)
        listings.append(d.skipped())
    assert listings[0] == listings[1] == listings[2] and len(listings[0]) == 2


def test_prepare_data_checks_the_stage_splits_and_setup_on_another_rank_reads_them(pristine, tmp_path, opened):
    root = tmp_path / "coco"
    shutil.copytree(pristine["coco"], root)
    cache = tmp_path / "image_checks"
    rank0 = make("coco", root, cache)
    rank0.prepare_data()  # the runner's own call, no Trainer: the evaluated split
    assert {p.parent.name for p in opened} == {"val2014"} and len(opened) == len(rank0.records("test"))
    opened.clear()
    rank0.trainer = SimpleNamespace(state=SimpleNamespace(fn=SimpleNamespace(value="fit")))
    rank0.prepare_data()  # Lightning's call in fit, on local rank 0: train and val
    assert len(opened) == len(rank0.records("train")) + len(rank0.records("val"))
    opened.clear()
    rank1 = make("coco", root, cache)  # another rank: no prepare_data, setup reads the verdicts
    rank1.setup("fit")
    rank1.setup("test")
    assert opened == []
    assert {s: rank1.records(s) for s in ("train", "val", "test")} == all_records(rank0)


def test_a_damaged_or_foreign_cache_file_is_ignored_and_replaced(pristine, tmp_path, opened, caplog):
    root = tmp_path / "rsicap"
    shutil.copytree(pristine["rsicap"], root)
    cache_dir = tmp_path / "image_checks"
    first = all_records(make("rsicap", root, cache_dir))
    (path,) = cache_dir.iterdir()
    n = len(opened)
    for damage in (
        "{not json",
        json.dumps({"format": "other", "entries": {}}),
        json.dumps({"format": "instructsee-image-checks", "version": CHECK_VERSION + 1, "entries": {}}),
    ):
        path.write_text(damage)
        opened.clear()
        assert all_records(make("rsicap", root, cache_dir)) == first and len(opened) == n
        assert json.loads(path.read_text())["version"] == CHECK_VERSION  # rewritten whole
    assert "checking every image again" in caplog.text
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name]  # no temporary file left


def test_cache_writers_merge_and_keys_are_per_root_and_dataset(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    a = ImageCheckCache(tmp_path / "c", root, "coco")
    b = ImageCheckCache(tmp_path / "c", root, "coco")
    a.save({"x.jpg": (1, 2)})
    b.save({"y.jpg": (3, 4)})  # another process: both entries kept
    assert a.load() == {"x.jpg": (1, 2), "y.jpg": (3, 4)}
    assert ImageCheckCache(tmp_path / "c", root, "medpix").path != a.path
    assert ImageCheckCache(tmp_path / "c", tmp_path / "other", "coco").path != a.path
    assert a.key(root / "sub" / "x.jpg") == "sub/x.jpg" and a.key(tmp_path / "y.jpg") == str(tmp_path / "y.jpg")


def test_check_threads_are_bounded(tmp_path):
    assert 1 <= check_threads() <= 16
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        check_threads(100)
    assert check_images([]) == [] and check_images([tmp_path / "absent.png"], threads=1) == ["missing"]


def test_bench_data_check_uses_the_cache_and_keeps_its_exit_codes(pristine, tmp_path, opened):
    root = tmp_path / "medpix"
    shutil.copytree(pristine["medpix"], root)
    runner = CliRunner()
    args = ["data", "check", "--dataset", "medpix", "--data-root", str(root), "--cache-dir", str(tmp_path / "c")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "OK" in res.output, res.output
    n = len(opened)
    opened.clear()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output == res.output and opened == []
    assert runner.invoke(app, [*args, "--recheck"]).exit_code == 0 and len(opened) == n
    images = sorted((root / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:60])
    for _ in range(2):  # the missing and the unreadable image found again: the same report
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert "missing images (1):" in res.output and "unreadable images (1):" in res.output


def test_bench_run_checks_once_across_runs_and_records_the_loader(pristine, tmp_path, opened):
    from tests.real_helpers import bench_run, result

    root = tmp_path / "coco"
    shutil.copytree(pristine["coco"], root)
    bad = make("coco", root, None).annotated_records("test")[0].path
    bad.write_bytes(b"not a jpeg")
    opened.clear()
    bench_run(tmp_path, "coco", root)
    first = result(tmp_path, "coco")
    n_images = len({p for p in opened})
    assert n_images == 17 and len(list((tmp_path / "cache" / "image_checks").iterdir())) == 1
    opened.clear()
    bench_run(tmp_path, "coco", root, "--tag", "again")  # the cached checkpoint, the cached verdicts
    second = result(tmp_path, "coco", "again")
    assert opened == [bad]  # only the unreadable image (never cached) is opened again
    # the test split's skipped image is listed by both runs (the second one trains nothing)
    assert second["data"]["skipped"] == first["data"]["skipped"] and len(first["data"]["skipped"]) == 1
    assert first["data"]["skipped"][0]["path"] == "<data>/" + bad.relative_to(tmp_path / "coco").as_posix()
    assert first["data"]["loader"]["pin_memory"] is False and first["data"]["loader"]["num_workers"] >= 0
    assert second["metrics"] == first["metrics"]
