"""``bench data check`` on the fixture datasets, and the image loading path of real data."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from benchmark.cli import app
from datamodules.base import (
    DataError,
    IndexedImages,
    InstructionTemplates,
    TrainPairs,
    check_image,
    load_image,
    read_json,
)
from datamodules.validate import read_jsonl
from lightning_modules.components.image_transform import ImageTransform
from tests.fixtures_real import write_coco_lavis, write_jpeg, write_medpix, write_rsicap

runner = CliRunner()


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    write_coco_lavis(base / "coco")
    write_medpix(base / "medpix")
    write_rsicap(base / "rsicap")
    return {name: base / name for name in ("coco", "medpix", "rsicap")}


def check(*args: str):
    return runner.invoke(app, ["data", "check", *args])


def test_check_prints_counts_per_split(roots):
    res = check("--dataset", "coco", "--data-root", str(roots["coco"]))
    assert res.exit_code == 0, res.output
    assert "layout: lavis" in res.output and "OK" in res.output
    assert "test                   5 images       29 captions  0 missing  0 unreadable" in res.output
    res = check("--dataset", "medpix", "--data-root", str(roots["medpix"]))
    assert res.exit_code == 0, res.output
    assert "val (dev)" in res.output and "Case_topic.json: 10 cases" in res.output
    res = check("--dataset", "medpix", "--data-root", str(roots["medpix"]), "--options", '{"train_split": "train_2"}')
    assert "train (train_2)" in res.output
    res = check("--dataset", "rsicap", "--data-root", str(roots["rsicap"]))
    assert res.exit_code == 0, res.output
    assert "RSIEval: 3 images, 6 QA pairs (1 empty questions skipped)" in res.output and "hash split" in res.output


def test_check_lists_missing_and_unreadable_images_exit_1(roots, tmp_path):
    root = tmp_path / "medpix"
    shutil.copytree(roots["medpix"], root)
    images = sorted((root / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:60])  # truncated PNG
    res = check("--dataset", "medpix", "--data-root", str(root))
    assert res.exit_code == 1, res.output
    assert "missing images (1):" in res.output and images[0].name in res.output
    assert "unreadable images (1):" in res.output and images[1].name in res.output
    assert "PROBLEMS FOUND" in res.output


def test_check_bad_layout_or_annotations_exit_2(roots, tmp_path, monkeypatch):
    res = check("--dataset", "rsicap", "--data-root", str(tmp_path))
    assert res.exit_code == 2 and "RSICap/captions.json" in res.output and "Lavender105/RSGPT" in res.output
    res = check("--dataset", "coco")
    assert res.exit_code == 2 and "--data-root" in res.output
    monkeypatch.setenv("INSTRUCTSEE_DATA_ROOT", str(roots["coco"].parent))
    assert check("--dataset", "coco").exit_code == 0  # $INSTRUCTSEE_DATA_ROOT/coco
    root = tmp_path / "rs"
    shutil.copytree(roots["rsicap"], root)
    doc = json.loads((root / "RSICap" / "captions.json").read_text())
    doc["annotations"][7]["text_output"] = 42
    (root / "RSICap" / "captions.json").write_text(json.dumps(doc))
    res = check("--dataset", "rsicap", "--data-root", str(root))
    assert res.exit_code == 2 and "captions.json: annotations[7]" in res.output and "'text_output'" in res.output
    assert check("--dataset", "synthetic", "--data-root", str(tmp_path)).exit_code == 2
    assert check("--dataset", "cocoa").exit_code == 2
    res = check("--dataset", "medpix", "--data-root", str(roots["medpix"]), "--options", "[1]")
    assert res.exit_code == 2 and "JSON object" in res.output


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_fuzz_annotation_file_readers_on_any_bytes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("bytes") / "annotations.json"
    path.write_bytes(content)
    for read in (read_json, read_jsonl):
        try:
            read(path)
        except DataError as e:
            assert str(path) in str(e)
    with pytest.raises(DataError, match="is a directory"):
        read_json(path.parent)  # a folder


# -- image loading ------------------------------------------------------------------------
def test_draft_decoding_is_close_to_full_decoding(tmp_path):
    path = tmp_path / "photo.jpg"
    write_jpeg(path, (640, 480), seed=3)
    full, draft = ImageTransform(224, 224, draft=False), ImageTransform(224, 224)
    assert full.draft_size() is None and draft.draft_size() == 224
    assert load_image(path, 224).size == (320, 240)  # decoded at 1/2 scale, both sides >= 224
    a = full(load_image(path))
    b = draft(load_image(path, draft.draft_size()))
    assert a.shape == b.shape == (3, 224, 224)
    diff = (a - b).abs() * torch.tensor(full.std).view(3, 1, 1) * 255  # in grey levels
    assert diff.mean() < 3 and torch.quantile(diff.flatten(), 0.99) < 20, (diff.mean(), diff.max())
    small = tmp_path / "small.jpg"
    write_jpeg(small, (300, 200), seed=4)
    assert load_image(small, 224).size == (300, 200)  # no reduction possible: untouched


def test_any_mode_and_size_become_rgb(tmp_path):
    for mode, size in (("RGBA", (17, 90)), ("L", (300, 5)), ("P", (64, 64)), ("I;16", (40, 30)), ("CMYK", (20, 20))):
        im = Image.new("RGB", size, (200, 30, 60)).convert(mode)
        path = tmp_path / f"im_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path)
        out = load_image(path, 224)
        assert out.mode == "RGB" and out.size == size
        assert ImageTransform(48, 48)(out).shape == (3, 48, 48)


def test_check_image_detects_missing_truncated_and_garbage(tmp_path):
    good = tmp_path / "good.jpg"
    write_jpeg(good, (200, 150), seed=1)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert check_image(good) is None
    assert check_image(tmp_path / "absent.jpg") == "missing"
    assert check_image(truncated).startswith("unreadable") and check_image(garbage).startswith("unreadable")


def test_datasets_fall_back_only_when_tolerant(tmp_path):
    from datamodules.base import CaptionRecord, ImageRecord

    good = tmp_path / "good.png"
    Image.new("RGB", (10, 10), (255, 0, 0)).save(good)
    paths = [good, tmp_path / "gone.png"]
    to_tensor = lambda im: torch.from_numpy(np.asarray(im).copy()).float()  # noqa: E731
    with pytest.raises(DataError, match="gone.png"):
        IndexedImages(paths, to_tensor)[1]
    tolerant = IndexedImages(paths, to_tensor, tolerant=True)
    with pytest.warns(RuntimeWarning, match="black image"):
        i, pixels = tolerant[1]
    assert i == 1 and pixels.sum() == 0 and tolerant.failures == [str(paths[1])]
    records = [ImageRecord(str(k), p, (CaptionRecord(f"c{k}"),)) for k, p in enumerate(paths)]
    templates = InstructionTemplates(("{caption}",))
    with pytest.raises(DataError):
        TrainPairs(records, to_tensor, templates)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        j, pixels, text, relevant = TrainPairs(records, to_tensor, templates, tolerant=True)[1]
    assert (j, text, relevant) == (0, "c0", (0,)) and pixels[..., 0].sum() == 255 * 100
