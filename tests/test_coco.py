"""COCO-Karpathy: both packagings, every caption, stripped text, skipped images, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from datamodules.base import DataError
from datamodules.coco import CocoKarpathyDataModule, coco_id, parse_karpathy, parse_lavis_eval, parse_lavis_train
from datamodules.datamodule import DataConfig
from tests.fixtures_real import write_coco_karpathy, write_coco_lavis
from tests.real_helpers import bench_run, json_values, mutated, result


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco_karpathy")
    return root, write_coco_karpathy(root)


@pytest.fixture(scope="module")
def lavis(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco_lavis")
    return root, write_coco_lavis(root)


def dm(root: Path, **kw) -> CocoKarpathyDataModule:
    return CocoKarpathyDataModule(DataConfig(root=str(root), **kw))


def copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    return out


def test_both_packagings_give_the_same_splits(karpathy, lavis):
    (k_root, counts), (l_root, _) = karpathy, lavis
    k, la = dm(k_root), dm(l_root)
    assert (k.layout(), la.layout()) == ("karpathy", "lavis")
    for split in ("train", "val", "test"):
        kr, lr = k.records(split), la.records(split)
        assert (len(kr), sum(len(r.captions) for r in kr)) == counts[split]
        assert [r.image_id for r in kr] == [r.image_id for r in lr]
        assert [r.captions for r in kr] == [r.captions for r in lr]
        assert [r.path.relative_to(k_root) for r in kr] == [r.path.relative_to(l_root / "images") for r in lr]
        assert all(r.path.is_file() for r in kr + lr)
    train = k.records("train")
    assert {r.metadata["split"] for r in train} == {"train", "restval"}  # train = train + restval
    assert {len(r.captions) for r in train} == {5, 6, 7}  # never assume 5
    captions = [c.text for r in train for c in r.captions]
    assert all(c == c.strip() and c for c in captions)  # raw's trailing space stripped


def test_eval_set_uses_every_caption_with_instructions(karpathy):
    root, counts = karpathy
    es = dm(root).eval_set("test")
    assert es.n_images == counts["test"][0] and es.n_queries == counts["test"][1]
    assert es.instructions != es.captions and all(c in i for c, i in zip(es.captions, es.instructions))
    assert es.relevance["t2i"].counts().tolist() == [1] * es.n_queries  # own image only
    assert es.relevance["i2t"].counts().tolist() == [5, 6, 7, 5, 6]


def test_coco_id_from_file_name():
    assert coco_id("val2014/COCO_val2014_000000391895.jpg") == "391895"
    assert coco_id("no_digits.jpg") is None


def test_lavis_in_a_coco_subfolder(lavis, tmp_path):
    root, counts = lavis
    shutil.copytree(root, tmp_path / "coco")
    d = dm(tmp_path)
    assert d.layout() == "lavis (coco/ subfolder)"
    assert len(d.records("test")) == counts["test"][0]


def test_absent_or_wrong_layout_names_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="(?s)no data root given.*dataset_coco.json"):
        dm("").prepare_data()
    with pytest.raises(DataError, match="(?s)does not exist.*cocodataset.org"):
        dm(tmp_path / "nowhere").prepare_data()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match=r"(?s)expected layout.*coco_karpathy_test.json.*caption_datasets.zip"):
        dm(tmp_path).prepare_data()


def test_missing_and_corrupt_images_are_skipped_and_listed(karpathy, tmp_path):
    root = copy(karpathy[0], tmp_path)
    test_imgs = sorted((root / "val2014").iterdir())
    doc = json.loads((root / "dataset_coco.json").read_text())
    test_files = [im["filename"] for im in doc["images"] if im["split"] == "test"]
    (root / "val2014" / test_files[0]).unlink()  # missing
    truncated = root / "val2014" / test_files[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])  # truncated JPEG
    d = dm(root)
    records = d.records("test")
    assert len(records) == 3 and len(test_imgs) > 3
    skipped = {Path(s["path"]).name: s for s in d.skipped()}
    assert skipped[test_files[0]]["reason"] == "missing"
    assert skipped[test_files[1]]["reason"].startswith("unreadable")
    assert {s["n_captions"] for s in skipped.values()} == {5, 6} and {s["split"] for s in skipped.values()} == {"test"}
    es = d.eval_set("test")
    assert es.n_images == 3 and es.n_queries == 5 + 6 + 7 - 5 - 6 + 5 + 6  # their captions went with them
    with pytest.raises(DataError, match="2 of 5 images of split 'test' are missing or unreadable.*strict"):
        dm(root, strict=True).records("test")


@pytest.mark.parametrize("workers", [0, 1])
def test_image_vanishing_after_setup_does_not_crash(karpathy, tmp_path, workers):
    root = copy(karpathy[0], tmp_path)
    d = dm(root, eval_batch_size=2, num_workers=workers)
    d.set_transform(lambda im: __import__("torch").zeros(3, 4, 4) + im.size[0])
    es = d.eval_set("test")
    es.image_paths[0].unlink()
    if workers == 0:  # a worker process warns on its own stderr
        with pytest.warns(RuntimeWarning, match="image file not found"):
            batches = list(d.gallery_dataloader("test"))
    else:
        batches = list(d.gallery_dataloader("test"))
    assert sum(len(b[0]) for b in batches) == es.n_images
    assert [int(i) for b in batches for i in b[0]] == list(range(es.n_images))
    pairs = list(d.train_dataloader())
    assert sum(len(b) for b in pairs) == len(d.records("train"))


EDITS = [
    (lambda d: d.pop("images"), ["top level", "'images'"]),
    (lambda d: d["images"][2].pop("sentences"), ["images[2]", "'sentences'"]),
    (lambda d: d["images"][1]["sentences"][0].update(raw="   "), ["images[1]", "sentences[0]", "'raw'", "empty"]),
    (lambda d: d["images"][0].update(split="holdout"), ["images[0]", "'split'", "holdout"]),
    (lambda d: d["images"][3].update(filename=7), ["images[3]", "'filename'", "string"]),
    (lambda d: d["images"][4].update(sentences=[]), ["images[4]", "'sentences'", "empty"]),
    (lambda d: d["images"][5].update(cocoid=d["images"][4]["cocoid"]), ["images[5]", "repeats images[4]"]),
]


@pytest.mark.parametrize("edit, words", EDITS)
def test_malformed_karpathy_file_names_file_record_field(karpathy, tmp_path, edit, words):
    path = karpathy[0] / "dataset_coco.json"
    doc = json.loads(path.read_text())
    edit(doc)
    with pytest.raises(DataError) as info:
        parse_karpathy(doc, path, tmp_path)
    for w in [str(path), *words]:
        assert w in str(info.value), str(info.value)


def test_malformed_lavis_files(lavis, tmp_path):
    root = copy(lavis[0], tmp_path)
    ann = root / "annotations"
    train = json.loads((ann / "coco_karpathy_train.json").read_text())
    train[3]["caption"] = ["not", "a string"]
    (ann / "coco_karpathy_train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"coco_karpathy_train.json: entry \[3\].*'caption' must be a string"):
        dm(root).records("train")
    (ann / "coco_karpathy_val.json").write_text("[{]")
    with pytest.raises(DataError, match="coco_karpathy_val.json: not valid JSON"):
        dm(root).records("val")
    test = json.loads((ann / "coco_karpathy_test.json").read_text())
    test[1]["caption"][2] = ""
    (ann / "coco_karpathy_test.json").write_text(json.dumps(test))
    with pytest.raises(DataError, match=r"entry \[1\] .*caption\[2\]: empty caption"):
        dm(root).records("test")


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_data_error(parse, doc, path):
    try:
        parse(doc, path, Path("/images"))
    except DataError as e:
        assert str(path) in str(e)


@FUZZ
@given(doc=json_values)
def test_fuzz_parsers_on_any_json(doc):
    for parse, name in (
        (parse_karpathy, "dataset_coco.json"),
        (parse_lavis_train, "coco_karpathy_train.json"),
        (parse_lavis_eval, "coco_karpathy_test.json"),
    ):
        _only_data_error(parse, doc, Path(name))


@pytest.fixture(scope="module")
def valid_docs(karpathy, lavis) -> dict:
    ann = lavis[0] / "annotations"
    return {
        "karpathy": json.loads((karpathy[0] / "dataset_coco.json").read_text()),
        "train": json.loads((ann / "coco_karpathy_train.json").read_text())[:8],
        "test": json.loads((ann / "coco_karpathy_test.json").read_text()),
    }


@FUZZ
@given(data=__import__("hypothesis").strategies.data())
def test_fuzz_parsers_on_mutated_valid_files(valid_docs, data):
    doc = data.draw(mutated(valid_docs["karpathy"]))
    _only_data_error(parse_karpathy, doc, Path("dataset_coco.json"))
    _only_data_error(parse_lavis_train, data.draw(mutated(valid_docs["train"])), Path("coco_karpathy_train.json"))
    _only_data_error(parse_lavis_eval, data.draw(mutated(valid_docs["test"])), Path("coco_karpathy_test.json"))


def test_bench_run_on_coco_records_skipped_images(karpathy, tmp_path):
    root = copy(karpathy[0], tmp_path)
    doc = json.loads((root / "dataset_coco.json").read_text())
    bad = next(im for im in doc["images"] if im["split"] == "test")
    (root / bad["filepath"] / bad["filename"]).write_bytes(b"not a jpeg")
    bench_run(tmp_path, "coco", root)
    r = result(tmp_path, "coco")
    assert r["provenance"]["n_gallery_images"] == 4 and r["provenance"]["dataset_layout"] == "karpathy"
    assert [s["image_id"] for s in r["data"]["skipped"]] == [str(bad["cocoid"])]
    assert r["metrics"]["t2i/n_queries"] == 29 - 5
    # COCO defines no image-image relevance: i2i is skipped, and the run says so
    assert r["provenance"]["skipped_directions"] == ["i2i"] and not any(k.startswith("i2i/") for k in r["metrics"])
    res = bench_run(tmp_path, "coco", root, "--strict", "--tag", "strict", expect=2)
    assert "strict" in res.output and bad["filename"] in res.output and "train_s" not in res.output
    shutil.copy(karpathy[0] / bad["filepath"] / bad["filename"], root / bad["filepath"] / bad["filename"])
    train_bad = next(im for im in doc["images"] if im["split"] == "restval")
    (root / train_bad["filepath"] / train_bad["filename"]).write_bytes(b"")
    res = bench_run(tmp_path, "coco", root, "--strict", "--tag", "strict", "--retrain", expect=2)
    assert "split 'train'" in res.output and train_bad["filename"] in res.output
    assert not (tmp_path / "results" / "clip__coco__strict.json").exists()
