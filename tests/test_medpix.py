"""MedPix 2.0: official case splits (val -> dev), captions, metadata, templates, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.base import DataError, load_image
from datamodules.datamodule import DataConfig
from datamodules.medpix import MedPixDataModule, parse_case_topics, parse_records
from datamodules.validate import read_jsonl
from tests.fixtures_real import write_medpix
from tests.real_helpers import bench_run, json_values, mutated, result


@pytest.fixture(scope="module")
def medpix(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("medpix")
    return root, write_medpix(root)


def dm(root: Path, **kw) -> MedPixDataModule:
    return MedPixDataModule(DataConfig(root=str(root), **kw))


def test_official_splits_with_val_as_dev(medpix):
    root, counts = medpix
    d = dm(root)
    assert {s: len(d.records(s)) for s in ("train", "val", "test")} == {
        "train": counts["train"][0],
        "val": counts["dev"][0],
        "test": counts["test"][0],
    }
    for part in ("train_1", "train_2"):
        assert len(dm(root, options={"train_split": part}).records("train")) == counts[part][0]
    dev_ids = {json.loads(line)["image"] for line in (root / "splitted_dataset/descriptions_dev.jsonl").open()}
    assert {r.image_id for r in d.records("val")} == dev_ids
    assert d.describe()["split_files"]["val"] == "splitted_dataset/descriptions_dev.jsonl"


def test_records_captions_metadata_and_images(medpix):
    root, _ = medpix
    records = dm(root).records("train") + dm(root).records("test")
    by_id = {r.image_id: r for r in records}
    raw = [
        json.loads(line)
        for s in ("train", "test")
        for line in (root / f"splitted_dataset/descriptions_{s}.jsonl").open()
    ]
    for rec in raw:
        r = by_id[rec["image"]]
        assert r.path == root / "images" / f"{rec['image']}.png"  # names carry no extension
        assert r.captions[0].text == rec["Description"]["Caption"].strip()
        assert r.metadata["type"] == rec["Type"] and r.metadata["location"] == rec["Location"]
        assert r.metadata["location_category"] == rec["Location Category"]
        assert r.metadata["modality"] == rec["Description"]["Modality"]
        assert r.metadata["plane"] == rec["Description"].get("Plane")  # absent -> None
        assert r.metadata["figure_part"] == rec["Description"]["Figure Part"]  # null -> None
    assert any(len(r.captions[0].text.split()) == 1 for r in records)  # one-word captions kept
    assert {r.metadata["type"] for r in records} == {"CT", "MR"}
    modes = {Image_mode(r.path) for r in records}
    assert {"RGBA", "L"} <= modes
    assert all(load_image(r.path).mode == "RGB" for r in records)


def Image_mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode


def test_case_topics_map_tac_mri_to_ct_mr(medpix):
    root, _ = medpix
    cases = parse_case_topics(json.loads((root / "Case_topic.json").read_text()), root / "Case_topic.json")
    types = {r.image_id: r.metadata["type"] for s in ("train", "val", "test") for r in dm(root).records(s)}
    for uid, imgs in cases.items():
        for kind, names in imgs.items():
            assert all(types[n] == kind for n in names), uid
    assert sum(len(v["CT"]) + len(v["MR"]) for v in cases.values()) == len(types)


def test_templates_use_the_image_type(medpix):
    root, _ = medpix
    es = dm(root).eval_set("test")
    types = [dm(root).records("test")[int(s)].metadata["type"] for s in es.source]
    assert all(f" {t} " in i and i.endswith(c) for i, c, t in zip(es.instructions, es.captions, types))
    custom = dm(root, templates=("A {plane} {modality} slice of the {location_category}: {caption}",))
    assert custom.eval_set("test").instructions[0].startswith("A ")
    with pytest.raises(DataError, match=r"\{organ\} is not offered by dataset 'medpix'.*\{modality\}"):
        dm(root, templates=("{organ}: {caption}",))
    vocab = dm(root).vocabulary_texts()
    assert "Find the CT image that shows: " in vocab and "Find the MR image that shows: " in vocab


def test_bad_option_and_layout(medpix, tmp_path):
    with pytest.raises(DataError, match="data.options.train_part.*train_split"):
        dm(medpix[0], options={"train_part": "train_1"})
    with pytest.raises(DataError, match="train_split must be one of"):
        dm(medpix[0], options={"train_split": "train_3"})
    with pytest.raises(DataError, match="(?s)expected layout.*splitted_dataset.*CHILab1/MedPix-2.0"):
        dm(tmp_path).prepare_data()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r.pop("Description"), ["record 2", "'Description'"]),
        (lambda r: r["Description"].update(Caption=" "), ["record 2", "Description", "'Caption'", "empty"]),
        (lambda r: r["Description"].update(Caption=["x"]), ["'Caption' must be a string, got a list"]),
        (lambda r: r.update(image=None), ["record 2", "'image'"]),
        (lambda r: r.update(Type=3), ["'Type' must be a string"]),
        (lambda r: r.update(Location=[]), ["'Location' must be a string"]),
    ],
)
def test_malformed_split_file_names_file_record_field(medpix, tmp_path, edit, words):
    root = tmp_path / "m"
    shutil.copytree(medpix[0], root)
    path = root / "splitted_dataset" / "descriptions_test.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    edit(rec)
    lines[1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        dm(root).records("test")
    for w in [str(path), *words]:
        assert w in str(info.value), str(info.value)


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "descriptions_dev.jsonl"
    path.write_text('{"image": "a"}\n\n{"image": \n')
    with pytest.raises(DataError, match="descriptions_dev.jsonl: line 3: not valid JSON"):
        read_jsonl(path)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_data_error(fn, doc, path):
    try:
        fn(doc, path)
    except DataError as e:
        assert str(path) in str(e)


@FUZZ
@given(doc=json_values)
def test_fuzz_parsers_on_any_json(doc):
    _only_data_error(lambda d, p: parse_records(d, p, Path("/images")), doc, Path("descriptions_test.jsonl"))
    _only_data_error(parse_case_topics, doc, Path("Case_topic.json"))


@FUZZ
@given(data=st.data())
def test_fuzz_parsers_on_mutated_valid_files(medpix, data):
    root = medpix[0]
    descriptions = json.loads((root / "Descriptions.json").read_text())[:4]
    cases = json.loads((root / "Case_topic.json").read_text())[:3]
    doc = data.draw(mutated(descriptions))
    _only_data_error(lambda d, p: parse_records(d, p, Path("/images")), doc, Path("Descriptions.json"))
    _only_data_error(parse_case_topics, data.draw(mutated(cases)), Path("Case_topic.json"))


def test_bench_run_on_medpix(medpix, tmp_path):
    root, counts = medpix
    bench_run(tmp_path, "medpix", root, "--set", 'data.options={"train_split": "train_1"}')
    r = result(tmp_path, "medpix")
    assert r["provenance"]["n_gallery_images"] == counts["test"][0] and r["data"]["skipped"] == []
    assert r["provenance"]["split_files"]["train"] == "splitted_dataset/descriptions_train_1.jsonl"
    assert r["metrics"]["t2i/n_queries"] == counts["test"][1]
    assert torch.isfinite(torch.tensor(r["metrics"]["t2i/MRR"]))
