"""The ``folder`` dataset: reading JSONL and CSV, the hash split, groups, instructions, errors
that name the line and the field, paths kept inside the root, corrupt images skipped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.registry import DATASETS
from datamodules.base import DataError
from datamodules.datamodule import DataConfig
from datamodules.folder import FolderDataModule, FolderOptions, hash_split
from datamodules.folder_annotations import read_annotations, relative_inside_root
from lightning_modules.components.image_transform import ImageTransform
from tests.folder_fixtures import folder_rows, write_annotations, write_folder


def dm_of(root: Path, **config) -> FolderDataModule:
    dm = FolderDataModule(DataConfig(root=str(root), **config))
    dm.set_transform(ImageTransform(16, 16))
    return dm


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grouped")
    write_folder(root, split=True)
    return root


def test_registered():
    assert DATASETS.get("folder") is FolderDataModule


def test_jsonl_and_csv_give_the_same_records(tmp_path):
    rows = write_folder(tmp_path / "j", fmt="jsonl")
    write_folder(tmp_path / "c", fmt="csv")
    j, c = dm_of(tmp_path / "j"), dm_of(tmp_path / "c")
    assert (j.layout(), c.layout()) == ("jsonl", "csv")
    for split in ("train", "val", "test"):
        rj, rc = j.annotated_records(split), c.annotated_records(split)
        assert [(r.image_id, r.captions, r.relevant_images, r.i2i_relevant) for r in rj] == [
            (r.image_id, r.captions, r.relevant_images, r.i2i_relevant) for r in rc
        ]
    records = [r for s in ("train", "val", "test") for r in j.annotated_records(s)]
    assert len(records) == 36 and sum(len(r.captions) for r in records) == len(rows) == 72
    assert all(r.path == tmp_path / "j" / r.image_id for r in records)
    with_instruction = [c for r in records for c in r.captions if c.instruction is not None]
    assert len(with_instruction) == 12 and with_instruction[0].instruction.startswith("please find picture")


def test_hash_split_is_stable_and_independent_of_order_and_size(tmp_path):
    write_folder(tmp_path / "a", n_images=40, groups=False)
    rows = folder_rows(40, groups=False)
    write_annotations(tmp_path / "b", list(reversed(rows[:50])))  # other order, fewer images
    a, b = dm_of(tmp_path / "a"), dm_of(tmp_path / "b")
    split_a = {r.image_id: s for s in ("train", "val", "test") for r in a.annotated_records(s)}
    split_b = {r.image_id: s for s in ("train", "val", "test") for r in b.annotated_records(s)}
    assert len(split_b) == 25 and all(split_a[i] == s for i, s in split_b.items())
    assert all(split_a[i] == hash_split(i, FolderOptions()) for i in split_a)
    # the fractions are followed over many keys, and another seed gives another split
    opts = FolderOptions(train_fraction=0.6, val_fraction=0.3)
    counts = {s: 0 for s in ("train", "val", "test")}
    for k in range(4000):
        counts[hash_split(f"img_{k}.png", opts)] += 1
    assert abs(counts["train"] / 4000 - 0.6) < 0.03 and abs(counts["val"] / 4000 - 0.3) < 0.03
    other = dm_of(tmp_path / "a", options={"split_seed": 1})
    assert {r.image_id for r in other.annotated_records("train")} != {i for i, s in split_a.items() if s == "train"}


def test_split_by_group_keeps_a_group_in_one_split(tmp_path):
    write_folder(tmp_path, n_images=60, n_per_group=4)
    by_image, by_group = dm_of(tmp_path, options={"split_by": "image"}), dm_of(tmp_path)  # group: the default

    def groups_per_split(dm):
        return {s: {dm.index().groups[r.image_id] for r in dm.annotated_records(s)} for s in ("train", "val", "test")}

    g = groups_per_split(by_group)
    assert not (g["train"] & g["val"]) and not (g["train"] & g["test"]) and not (g["val"] & g["test"])
    g = groups_per_split(by_image)
    assert (g["train"] & g["val"]) or (g["train"] & g["test"])  # 15 groups of 4 split by image: some cross


def test_given_split_and_group_relevance(grouped):
    dm = dm_of(grouped)
    es = dm.eval_set("test")
    ids = es.image_ids
    assert dm.index().hashed == 0 and len(ids) == 6  # groups 4 and 9, three images each
    t2i = es.relevance["t2i"]
    for q in range(es.n_queries):
        own = int(es.source[q])
        group = dm.index().groups[ids[own]]
        assert sorted(ids[i] for i in t2i.row(q)) == sorted(i for i in ids if dm.index().groups[i] == group)
        assert len(t2i.row(q)) == 3  # multi-positive: the three images of the group
    i2i = es.relevance["i2i"]
    assert all(len(i2i.row(i)) == 2 and i not in i2i.row(i) for i in range(len(ids)))
    assert dm.i2i_queries == "gallery"
    # training targets carry the group's images too
    torch.manual_seed(0)
    from datamodules.base import TrainPairs

    pairs = TrainPairs(dm.records("train"), dm.transform, dm.templates)
    _, _, _, relevant = pairs[0]
    assert len(relevant) == 3


def test_without_groups_one_positive_and_augmented_i2i(tmp_path):
    write_folder(tmp_path, groups=False)
    dm = dm_of(tmp_path)
    es = dm.eval_set("train")
    assert all(list(es.relevance["t2i"].row(q)) == [es.source[q]] for q in range(es.n_queries))
    assert len(es.relevance["i2i"].indices) == 0 and dm.i2i_queries == "augmented_view"


def test_instruction_column_is_the_query_text(grouped):
    dm = dm_of(grouped)
    records = dm.annotated_records("train")
    es = dm.eval_set("train")
    q = 0
    for r in records:
        for c in r.captions:
            if c.instruction is not None:
                assert es.instructions[q] == c.instruction
            else:
                assert c.text in es.instructions[q] and es.instructions[q] != c.text  # a template
            q += 1
    vocab = dm.vocabulary_texts()
    assert any(t.startswith("please find picture") for t in vocab)
    from datamodules.base import TrainPairs

    pairs = TrainPairs(records, dm.transform, dm.templates)
    torch.manual_seed(0)
    texts = {pairs[0][2] for _ in range(30)}  # image 0: its plain caption (templated) and its instruction
    assert any(t.startswith("please find picture 0") for t in texts) and len(texts) >= 2


def test_paths_must_stay_inside_the_root(tmp_path):
    for bad, why in [
        ("../outside.png", "leaves the data root"),
        ("/etc/passwd", "absolute"),
        ("photos\\a.png", "'/'"),
        ("C:/x.png", "absolute"),
        ("a/../../b.png", "leaves"),
        (".", "no file"),
    ]:
        with pytest.raises(ValueError, match=why):
            relative_inside_root(bad)
    assert relative_inside_root("./photos/./a.png") == "photos/a.png"
    rows = folder_rows(4, groups=False)
    rows[3] = rows[3] | {"image": "../secret.png"}
    path = write_annotations(tmp_path, rows, "csv")
    with pytest.raises(DataError) as e:
        dm_of(tmp_path).annotated_records("train")
    assert f"{path}: line 5: field 'image' must be a path inside the data root, got '../secret.png'" in str(e.value)
    with pytest.raises(DataError, match="annotations must be a file inside the data root"):
        dm_of(tmp_path, options={"annotations": "../other.csv"})


def test_same_image_rows_share_one_record_and_normalized_paths(tmp_path):
    write_annotations(
        tmp_path,
        [
            {"image": "a.png", "caption": "one"},
            {"image": "./a.png", "caption": "two"},
            {"image": "b.png", "caption": "three", "split": "test"},
        ],
    )
    dm = dm_of(tmp_path, options={"train_fraction": 0.5, "val_fraction": 0.25})
    records = [r for s in ("train", "val", "test") for r in dm.annotated_records(s)]
    assert [(r.image_id, [c.text for c in r.captions]) for r in records if r.image_id == "a.png"] == [
        ("a.png", ["one", "two"])
    ]


@pytest.mark.parametrize(
    "fmt, content, messages",
    [
        (
            "csv",
            "image,caption\na.png,a cat\nb.png,\nc.png,a dog,extra\n",
            [
                "2 problems",
                "line 3: field 'caption' is empty",
                "line 4: 3 fields, but the header (line 1) has 2 columns",
            ],
        ),
        ("csv", "image,text\na.png,a cat\n", ["line 1 (header): missing column 'caption'"]),
        (
            "csv",
            "image,caption,split\na.png,a cat,training\n",
            ["line 2: field 'split' is 'training', expected one of"],
        ),
        ("csv", 'image,caption\n"a.png,a cat\n', ["line 2: not readable as CSV"]),
        ("csv", "", ["empty CSV file"]),
        ("csv", "image,caption,caption\na,b,c\n", ["column 'caption' appears more than once"]),
        ("jsonl", '{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": \n', ["line 2: not valid JSON"]),
        (
            "jsonl",
            '{"image": "a.png"}\n[1, 2]\n{"image": 3, "caption": "x"}\n{"image": "c.png", "caption": " "}\n',
            [
                "4 problems",
                "line 1: missing field 'caption'",
                "line 2: expected a JSON object",
                "line 3: field 'image' must be a string, got int 3",
                "line 4: field 'caption' is empty",
            ],
        ),
        ("jsonl", '{"image": "a.png", "caption": "x", "group": true}\n', ["line 1: field 'group' must be a string or"]),
        (
            "jsonl",
            '{"image": "a.png", "caption": "x", "split": "train"}\n{"image": "a.png", "caption": "y", "split": "test"}\n',
            ["line 2: field 'split' is 'test', but line 1 gives image 'a.png' the split 'train'"],
        ),
        (
            "jsonl",
            '{"image": "a.png", "caption": "x", "group": 1}\n{"image": "a.png", "caption": "y", "group": "2"}\n',
            ["line 2: field 'group' is '2', but line 1"],
        ),
        ("jsonl", "\n\n", ["no annotation rows"]),
        ("jsonl", '{"image": "a.png", "caption": "x", "n": ' + "1" * 5000 + "}\n", ["line 1: not readable as JSON"]),
        ("jsonl", "[" * 100_000 + "\n", ["line 1: not readable as JSON (RecursionError"]),
    ],
)
def test_errors_name_the_line_and_the_field(tmp_path, fmt, content, messages):
    path = tmp_path / f"annotations.{fmt}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        dm_of(tmp_path).annotated_records("train")
    for m in messages:
        assert m in str(e.value), str(e.value)
    assert str(path) in str(e.value)


def test_non_utf8_and_many_problems(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_bytes(b"image,caption\na.png,ok\nb.png,caf\xe9\n")
    with pytest.raises(DataError, match=r"line 3: not UTF-8 text"):
        read_annotations(path)
    path.write_text("image,caption\n" + "".join(f"x{i}.png,\n" for i in range(30)))
    with pytest.raises(DataError) as e:
        read_annotations(path)
    assert "30 problems" in str(e.value) and "... and 10 more" in str(e.value)
    path.write_bytes(b"\xef\xbb\xbfimage,caption\r\na.png,x\r\n")  # a spreadsheet's BOM and CRLF
    assert (
        read_annotations(path).rows == (read_annotations(path).rows[0],)
        and read_annotations(path).rows[0].image == "a.png"
    )


def test_layout_errors_and_the_annotations_option(tmp_path):
    with pytest.raises(DataError, match="does not have the expected layout.*annotations.jsonl"):
        dm_of(tmp_path).layout()
    with pytest.raises(DataError, match="no data root given"):
        FolderDataModule(DataConfig()).layout()
    write_annotations(tmp_path, folder_rows(4), "jsonl")
    write_annotations(tmp_path, folder_rows(4), "csv")
    with pytest.raises(DataError, match="holds both annotations.jsonl and annotations.csv.*data.options.annotations"):
        dm_of(tmp_path).layout()
    write_annotations(tmp_path, folder_rows(4), "csv", name="meta/captions.csv")
    dm = dm_of(tmp_path, options={"annotations": "meta/captions.csv"})
    assert dm.layout() == "csv" and dm.annotation_path() == tmp_path / "meta" / "captions.csv"
    # image paths stay relative to the root, not to the annotation file
    assert dm.index().records["train"][0].path.parent.parent.parent == tmp_path


@pytest.mark.parametrize(
    "options, message",
    [
        ({"train_fraction": 1.0}, "must lie in"),
        ({"val_fraction": 0}, "must lie in"),
        ({"train_fraction": math.nan}, "must lie in"),
        ({"train_fraction": 0.9, "val_fraction": 0.1}, "< 1"),
        ({"split_seed": -1}, "split_seed"),
        ({"split_by": "caption"}, "split_by must be one of group, image"),
        ({"annotations": "data.json"}, "must end in .jsonl or .csv"),
        ({"annotations": "/abs.csv"}, "absolute"),
        ({"fractions": 0.5}, "unknown option 'data.options.fractions'"),
        ({"split_seed": "0"}, "data.options.split_seed"),
    ],
)
def test_options_are_validated(tmp_path, options, message):
    with pytest.raises(DataError, match=message):
        FolderDataModule(DataConfig(root=str(tmp_path), options=options))


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    write_folder(tmp_path, groups=False, split=True, corrupt=0)  # image 0 is in train
    dm = dm_of(tmp_path)
    assert len(dm.records("train")) == len(dm.annotated_records("train")) - 1
    assert [s["image_id"] for s in dm.skipped()] == ["photos/street/img_000.png"]
    strict = dm_of(tmp_path, strict=True)
    with pytest.raises(DataError, match="strict mode"):
        strict.records("train")


def test_an_empty_split_is_refused_when_used(tmp_path):
    rows = [r | {"split": "train"} for r in folder_rows(6, groups=False)]
    write_annotations(tmp_path, rows)
    dm = dm_of(tmp_path)
    assert dm.annotated_records("test") == []  # bench data check counts it
    with pytest.raises(DataError, match="split 'test' has no image .*train 6, val 0, test 0.*split=test"):
        dm.eval_set("test")


def test_content_identity_keys_the_checkpoint(tmp_path):
    from benchmark.config import build_run_config, model_defaults
    from benchmark.store import checkpoint_dir

    write_folder(tmp_path / "a", n_images=8)
    write_folder(tmp_path / "b", n_images=9)
    a, b = dm_of(tmp_path / "a"), dm_of(tmp_path / "b")
    assert a.content_identity() != b.content_identity()
    cfg = build_run_config(model_defaults("clip"), {"dataset": "folder"})
    assert checkpoint_dir(cfg, content=a.content_identity()) != checkpoint_dir(cfg, content=b.content_identity())
    # the fixed datasets add nothing: their checkpoint keys are those of before
    assert checkpoint_dir(cfg, content={}) == checkpoint_dir(cfg)
    assert DATASETS.get("coco")(DataConfig()).content_identity() == {}
    d = a.describe()
    assert d["content_identity"] == a.content_identity() and d["split_definition"]["hashed_images"] == 8
    assert sum(d["split_definition"]["counts"].values()) == 8 and d["groups"]["n_groups"] == 3


@settings(max_examples=80, deadline=None)
@given(content=st.binary(max_size=80) | st.text(max_size=80).map(str.encode), fmt=st.sampled_from(["csv", "jsonl"]))
def test_fuzz_the_reader_raises_only_data_errors(tmp_path_factory, content, fmt):
    path = tmp_path_factory.mktemp("fuzz") / f"annotations.{fmt}"
    path.write_bytes(content)
    try:
        ann = read_annotations(path)
    except DataError as e:
        assert str(path) in str(e)
    else:
        assert all(r.caption and r.image and ".." not in r.image.split("/") for r in ann.rows)


def test_relevance_of_cut_and_skipped_images_stays_consistent(grouped):
    dm = dm_of(grouped, max_eval_images=4, eval_split="test")
    es = dm.eval_set()
    assert es.n_images == 4
    rows = [es.relevance["t2i"].row(q) for q in range(es.n_queries)]
    assert all(len(r) and r.max() < 4 for r in rows)
    assert np.array_equal(es.relevance["i2t"].dense(), es.relevance["t2i"].dense().T)


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet="ab./\\:\x00C", max_size=12))
def test_path_check_agrees_with_pathlib_and_never_escapes(value):
    from pathlib import PurePosixPath

    try:
        out = relative_inside_root(value)
    except ValueError:
        path = PurePosixPath(value)
        assert (
            path.is_absolute()
            or ".." in path.parts
            or "\\" in value
            or "\x00" in value
            or value[1:2] == ":"
            or not [p for p in path.parts if p != "."]
        )
    else:
        assert out == "/".join(p for p in PurePosixPath(value).parts if p != ".")
        assert not out.startswith("/") and ".." not in out.split("/") and out


def test_a_symbolic_link_that_leaves_the_folder_is_refused(tmp_path: Path) -> None:
    """The shared path check (datamodules/paths.py) applies to the folder dataset too."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    root = tmp_path / "data"
    root.mkdir()
    (root / "leak.png").symlink_to(outside / "secret.png")
    (root / "annotations.jsonl").write_text('{"image": "leak.png", "caption": "a cat"}\n')
    from datamodules.folder import FolderOptions, build_index
    from datamodules.folder_annotations import read_annotations

    with pytest.raises(DataError, match="symbolic link"):
        build_index(read_annotations(root / "annotations.jsonl"), root, FolderOptions())
