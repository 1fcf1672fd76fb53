"""RSICap: the suite's deterministic hash split (recorded in results), RSIEval, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.base import DataError, load_image
from datamodules.datamodule import DataConfig
from datamodules.rsicap import (
    QAPair,
    RSICapDataModule,
    RSICapOptions,
    parse_captions,
    parse_rsieval,
    read_rsieval,
    split_of,
)
from tests.fixtures_real import N_RSICAP, write_rsicap
from tests.real_helpers import bench_run, json_values, mutated, result


@pytest.fixture(scope="module")
def rsicap(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rsgpt_dataset")
    write_rsicap(root)
    return root


def dm(root: Path, **kw) -> RSICapDataModule:
    return RSICapDataModule(DataConfig(root=str(root), **kw))


def test_split_is_a_partition_driven_by_captions_json(rsicap):
    d = dm(rsicap)
    ids = {s: [r.image_id for r in d.records(s)] for s in ("train", "val", "test")}
    assert sum(map(len, ids.values())) == N_RSICAP
    assert set().union(*map(set, ids.values())) == {str(i) for i in range(N_RSICAP)}  # string ids
    assert all(ids.values())
    (rsicap / "RSICap" / "images" / "stray_file_not_in_captions.png").write_bytes(b"x")
    assert sum(len(dm(rsicap).records(s)) for s in ("train", "val", "test")) == N_RSICAP  # folder not listed
    (rsicap / "RSICap" / "images" / "stray_file_not_in_captions.png").unlink()


def test_split_is_stable_and_independent_of_order_and_size():
    opts = RSICapOptions()
    ids = [str(i) for i in range(3000)]
    first = {i: split_of(i, opts) for i in ids}
    assert {i: split_of(i, opts) for i in reversed(ids)} == first
    assert {i: split_of(i, opts) for i in ids[:100]} == {i: first[i] for i in ids[:100]}
    shares = {s: list(first.values()).count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.1) < 0.02
    # pinned values: changing the definition must be a deliberate, visible change
    assert [split_of(str(i), opts) for i in range(12)] == PINNED
    other = RSICapOptions(train_fraction=0.5, val_fraction=0.25, split_seed=3)
    moved = sum(split_of(i, other) != first[i] for i in ids)
    assert moved > 500


PINNED = ["test", "test", "train", "train", "val", "train", "train", "train", "train", "train", "train", "train"]


def test_split_options_are_validated(rsicap):
    with pytest.raises(DataError, match="must be < 1"):
        dm(rsicap, options={"train_fraction": 0.9, "val_fraction": 0.2})
    with pytest.raises(DataError, match="data.options.train_fraction must be number"):
        dm(rsicap, options={"train_fraction": "0.8"})
    with pytest.raises(DataError, match="unknown option 'data.options.seed'.*split_seed"):
        dm(rsicap, options={"seed": 1})
    assert dm(rsicap, options={"train_fraction": 1 / 2, "val_fraction": 0.25}).options.test_fraction == 0.25


def test_describe_records_the_split_definition(rsicap):
    d = dm(rsicap).describe()["split_definition"]
    assert "sha256" in d["method"] and "image_id" in d["method"]
    assert (d["train_fraction"], d["val_fraction"], d["test_fraction"], d["split_seed"]) == (0.8, 0.1, 0.1, 0)
    assert sum(d["counts"].values()) == N_RSICAP and len(d["image_ids_sha256"]["test"]) == 64


def test_images_grayscale_to_rgb_and_captions(rsicap):
    recs = dm(rsicap).records("train")
    doc = json.loads((rsicap / "RSICap" / "captions.json").read_text())
    text = {a["image_id"]: a["text_output"] for a in doc["annotations"]}
    assert all(r.captions[0].text == text[r.image_id] for r in recs)
    assert all(load_image(r.path).mode == "RGB" for r in recs)


def test_rsicap_folder_itself_is_accepted(rsicap, tmp_path):
    shutil.copytree(rsicap / "RSICap", tmp_path / "RSICap")
    d = dm(tmp_path / "RSICap")
    assert d.layout() == "RSICap/" and sum(len(d.records(s)) for s in ("train", "val", "test")) == N_RSICAP
    assert d.rsieval() is None


def test_rsieval_reader_skips_empty_questions(rsicap):
    ev = read_rsieval(rsicap / "RSIEval" / "annotations.json")
    assert len(ev.images) == 3 and ev.n_qa_pairs == 6 and ev.n_skipped_questions == 1
    assert ev.images[0].qa_pairs[0] == QAPair("Does this image contains trees?", "Yes.", "presence")
    assert ev.images[0].path == rsicap / "RSIEval" / "images" / ev.images[0].filename and ev.images[0].path.is_file()
    assert ev.qa_types() == {"presence": 3, "quantity": 3}
    assert dm(rsicap).rsieval() == ev


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d["annotations"][2].pop("text_output"), ["annotations[2]", "'text_output'"]),
        (lambda d: d["annotations"][1].update(text_output=""), ["annotations[1]", "'text_output' is empty"]),
        (lambda d: d["annotations"][3].update(image_id=None), ["annotations[3]", "'image_id'"]),
        (lambda d: d["annotations"][4].update(image_id="0"), ["annotations[4]", "repeats annotations[0]"]),
        (lambda d: d["annotations"][5].update(filename=["a.png"]), ["annotations[5]", "'filename' must be a string"]),
        (lambda d: d.update(annotations={}), ["top level", "'annotations' must be a list"]),
    ],
)
def test_malformed_captions_json(rsicap, edit, words):
    path = rsicap / "RSICap" / "captions.json"
    doc = json.loads(path.read_text())
    edit(doc)
    with pytest.raises(DataError) as info:
        parse_captions(doc, path, Path("/images"))
    for w in [str(path), *words]:
        assert w in str(info.value), str(info.value)


def test_malformed_rsieval(rsicap):
    path = rsicap / "RSIEval" / "annotations.json"
    doc = json.loads(path.read_text())
    doc["annotations"][1]["qa_pairs"][0]["answer"] = 3
    with pytest.raises(DataError, match=r"annotations\[1\] \(P2001_0001.png\), qa_pairs\[0\]: field 'answer'"):
        parse_rsieval(doc, path, Path("/images"))


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_data_error(parse, doc, path):
    try:
        parse(doc, path, Path("/images"))
    except DataError as e:
        assert str(path) in str(e)


@FUZZ
@given(doc=json_values)
def test_fuzz_parsers_on_any_json(doc):
    _only_data_error(parse_captions, doc, Path("captions.json"))
    _only_data_error(parse_rsieval, doc, Path("annotations.json"))
    _only_data_error(parse_captions, {"annotations": doc}, Path("captions.json"))
    _only_data_error(parse_rsieval, {"annotations": doc}, Path("annotations.json"))


@FUZZ
@given(data=st.data())
def test_fuzz_parsers_on_mutated_valid_files(rsicap, data):
    caps = json.loads((rsicap / "RSICap" / "captions.json").read_text())
    caps["annotations"] = caps["annotations"][:5]
    ev = json.loads((rsicap / "RSIEval" / "annotations.json").read_text())
    _only_data_error(parse_captions, data.draw(mutated(caps)), Path("captions.json"))
    _only_data_error(parse_rsieval, data.draw(mutated(ev)), Path("annotations.json"))


def test_bench_run_on_rsicap_records_the_split(rsicap, tmp_path):
    bench_run(tmp_path, "rsicap", rsicap)
    r = result(tmp_path, "rsicap")
    d = r["provenance"]["split_definition"]
    assert d["counts"]["test"] == r["provenance"]["n_gallery_images"] and "sha256" in d["method"]
    assert r["config"]["data"]["options"] == {} and r["provenance"]["dataset_options"]["train_fraction"] == 0.8
