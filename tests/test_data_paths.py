"""Image paths from annotations stay inside the data root, in every loader (datamodules/paths.py).

Each loader is given a fixture folder in its real on-disk format (tests/fixtures_real.py, the
SynthScenes generator) with one record edited to escape: ``../x``, an absolute path, a
symbolic link leading out. Each must be refused with a DataError naming the annotation file,
the record and the field; paths that stay inside (also through a link that stays inside, or a
linked image folder) are accepted and give the same records as before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datamodules.base import DataError
from datamodules.coco import CocoKarpathyDataModule
from datamodules.datamodule import DataConfig
from datamodules.medpix import MedPixDataModule
from datamodules.paths import InsideRoot, resolve_inside
from datamodules.rsicap import RSICapDataModule, read_rsieval
from datamodules.synthetic.annotations import annotation_path, read_annotations
from datamodules.synthetic.generation import generate
from datamodules.synthetic.options import SyntheticOptions
from tests.fixtures_real import write_coco_karpathy, write_coco_lavis, write_medpix, write_png, write_rsicap

ESCAPES = ("../outside.png", "/etc/passwd", "a/../../outside.png")


# -- the helper ------------------------------------------------------------------------------
def test_paths_inside_are_joined_as_written(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    inside = InsideRoot(tmp_path / "img")
    assert inside("x.png", source="f.json", where="r", field="f") == tmp_path / "img" / "x.png"
    assert inside("a", "y.png", source="f.json", where="r", field="f") == tmp_path / "img" / "a" / "y.png"
    assert inside("a/../z.png", source="f.json", where="r", field="f") == tmp_path / "img" / "a/../z.png"
    assert resolve_inside(tmp_path / "img", "missing.png", source="f", where="r", field="f").name == "missing.png"


@pytest.mark.parametrize(
    "bad, why",
    [("../x.png", "'..'"), ("/etc/passwd", "absolute"), ("a/../../x", "'..'"), ("", "empty"), ("a\x00b", "NUL")],
)
def test_escaping_paths_are_refused_with_file_record_field(tmp_path, bad, why):
    with pytest.raises(DataError) as e:
        InsideRoot(tmp_path)(bad, source="ann.json", where="images[3]", field="filename")
    msg = str(e.value)
    assert msg.startswith("ann.json: images[3]: field 'filename' must be a path inside") and why in msg


def test_a_second_part_cannot_be_absolute(tmp_path):
    with pytest.raises(DataError, match="absolute"):
        InsideRoot(tmp_path)("val2014", "/etc/passwd", source="a", where="r", field="filepath/filename")


def test_symbolic_links_leading_out_are_refused_inside_ones_kept(tmp_path):
    base, outside = tmp_path / "root", tmp_path / "secret"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "key.png").write_bytes(b"x")
    (base / "sub" / "real.png").write_bytes(b"x")
    (base / "leak.png").symlink_to(outside / "key.png")
    (base / "dir").symlink_to(outside)
    (base / "fine.png").symlink_to(base / "sub" / "real.png")
    inside = InsideRoot(base)
    for bad in (("leak.png",), ("dir", "key.png"), ("dir/key.png",), ("sub/../dir/key.png",)):
        with pytest.raises(DataError, match="symbolic link"):
            inside(*bad, source="a", where="r", field="f")
    assert inside("fine.png", source="a", where="r", field="f") == base / "fine.png"


def test_a_linked_image_folder_is_the_loaders_choice_and_allowed(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "x.png").write_bytes(b"x")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "images").symlink_to(disk)
    inside = InsideRoot(tmp_path / "root" / "images")
    assert inside("x.png", source="a", where="r", field="f") == tmp_path / "root" / "images" / "x.png"
    with pytest.raises(DataError):
        inside("../x.png", source="a", where="r", field="f")


# -- every loader ------------------------------------------------------------------------------
def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _refused(load, path: Path, where: str, field: str) -> None:
    with pytest.raises(DataError) as e:
        load()
    msg = str(e.value)
    assert msg.startswith(f"{path}: {where}") and f"field {field!r}" in msg and "must be a path inside" in msg, msg


def _link_out(image: Path, tmp_path: Path) -> None:
    """Replace ``image`` by a link to a PNG outside the data root."""
    target = tmp_path / "outside" / "stolen.png"
    if not target.exists():
        write_png(target, (8, 8), 0)
    image.unlink()
    image.symlink_to(target)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, write in (
        ("karpathy", write_coco_karpathy),
        ("lavis", write_coco_lavis),
        ("medpix", write_medpix),
        ("rsicap", write_rsicap),
    ):
        out[name] = tmp_path_factory.mktemp(name)
        write(out[name])
    return out


def _copy(fixtures, name: str, tmp_path: Path) -> Path:
    root = tmp_path / "data" / name
    shutil.copytree(fixtures[name], root)
    return root


@pytest.mark.parametrize("bad", ["../../outside.png", "/etc/passwd", "a/../../../outside.png"])  # after filepath/
def test_karpathy_filepath_and_filename(fixtures, tmp_path, bad):
    root = _copy(fixtures, "karpathy", tmp_path)
    ann = root / "dataset_coco.json"
    first = json.loads(ann.read_text())["images"][0]
    _edit_json(ann, lambda d: d["images"][0].update(filename=bad))
    load = lambda: CocoKarpathyDataModule(DataConfig(root=str(root))).records(first["split"])  # noqa: E731
    _refused(load, ann, f"images[0] ({bad})", "filepath/filename")
    _edit_json(ann, lambda d: d["images"][0].update(filename=first["filename"], filepath="../../.."))
    _refused(load, ann, "images[0]", "filepath/filename")


def test_karpathy_link_out(fixtures, tmp_path):
    root = _copy(fixtures, "karpathy", tmp_path)
    first = json.loads((root / "dataset_coco.json").read_text())["images"][0]
    _link_out(root / first["filepath"] / first["filename"], tmp_path)
    load = lambda: CocoKarpathyDataModule(DataConfig(root=str(root))).records(first["split"])  # noqa: E731
    _refused(load, root / "dataset_coco.json", "images[0]", "filepath/filename")


@pytest.mark.parametrize("split", ["train", "test"])  # train: one entry per caption; test: one per image
@pytest.mark.parametrize("bad", ESCAPES)
def test_lavis_image(fixtures, tmp_path, split, bad):
    root = _copy(fixtures, "lavis", tmp_path)
    ann = root / "annotations" / f"coco_karpathy_{split}.json"
    _edit_json(ann, lambda d: d[0].update(image=bad))
    _refused(lambda: CocoKarpathyDataModule(DataConfig(root=str(root))).records(split), ann, "entry [0]", "image")


def test_lavis_link_out(fixtures, tmp_path):
    root = _copy(fixtures, "lavis", tmp_path)
    ann = root / "annotations" / "coco_karpathy_test.json"
    _link_out(root / "images" / json.loads(ann.read_text())[0]["image"], tmp_path)
    _refused(lambda: CocoKarpathyDataModule(DataConfig(root=str(root))).records("test"), ann, "entry [0]", "image")


@pytest.mark.parametrize("bad", ESCAPES)
def test_rsicap_captions_filename(fixtures, tmp_path, bad):
    root = _copy(fixtures, "rsicap", tmp_path)
    ann = root / "RSICap" / "captions.json"
    _edit_json(ann, lambda d: d["annotations"][0].update(filename=bad))
    _refused(
        lambda: RSICapDataModule(DataConfig(root=str(root))).records("test"),
        ann,
        "annotations[0] (image_id '0')",
        "filename",
    )


def test_rsicap_link_out(fixtures, tmp_path):
    root = _copy(fixtures, "rsicap", tmp_path)
    ann = root / "RSICap" / "captions.json"
    _link_out(root / "RSICap" / "images" / json.loads(ann.read_text())["annotations"][0]["filename"], tmp_path)
    _refused(lambda: RSICapDataModule(DataConfig(root=str(root))).records("test"), ann, "annotations[0]", "filename")


@pytest.mark.parametrize("bad", ESCAPES)
def test_rsieval_filename(fixtures, tmp_path, bad):
    root = _copy(fixtures, "rsicap", tmp_path)
    ann = root / "RSIEval" / "annotations.json"
    _edit_json(ann, lambda d: d["annotations"][1].update(filename=bad))
    _refused(lambda: read_rsieval(ann), ann, f"annotations[1] ({bad})", "filename")
    _refused(lambda: RSICapDataModule(DataConfig(root=str(root))).rsieval(), ann, "annotations[1]", "filename")


def test_rsieval_link_out(fixtures, tmp_path):
    root = _copy(fixtures, "rsicap", tmp_path)
    ann = root / "RSIEval" / "annotations.json"
    _link_out(root / "RSIEval" / "images" / json.loads(ann.read_text())["annotations"][0]["filename"], tmp_path)
    _refused(lambda: read_rsieval(ann), ann, "annotations[0]", "filename")


@pytest.mark.parametrize("bad", ESCAPES)
def test_medpix_image(fixtures, tmp_path, bad):
    root = _copy(fixtures, "medpix", tmp_path)
    ann = root / "splitted_dataset" / "descriptions_test.jsonl"
    lines = ann.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["image"] = bad
    ann.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    _refused(lambda: MedPixDataModule(DataConfig(root=str(root))).records("test"), ann, "record 1", "image")


def test_medpix_link_out(fixtures, tmp_path):
    root = _copy(fixtures, "medpix", tmp_path)
    ann = root / "splitted_dataset" / "descriptions_test.jsonl"
    _link_out(root / "images" / f"{json.loads(ann.read_text().splitlines()[0])['image']}.png", tmp_path)
    _refused(lambda: MedPixDataModule(DataConfig(root=str(root))).records("test"), ann, "record 1", "image")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(SyntheticOptions(n_train=4, n_val=2, n_test=3), tmp_path_factory.mktemp("synth"), workers=1)


@pytest.mark.parametrize("bad", ESCAPES)
def test_synthscenes_file(synth, tmp_path, bad):
    cache = tmp_path / synth.name
    shutil.copytree(synth, cache)
    ann = annotation_path(cache, "test")
    _edit_json(ann, lambda d: d["images"][0].update(file=bad))
    _refused(lambda: read_annotations(ann, "test"), ann, "images[0]", "file")


def test_loaders_accept_the_real_formats_unchanged(fixtures, synth):
    """Every fixture image path is admitted and is the plain join of the folder and the name."""
    k = CocoKarpathyDataModule(DataConfig(root=str(fixtures["karpathy"])))
    assert all(r.path.is_file() and r.path.parent.parent == fixtures["karpathy"] for r in k.records("test"))
    m = MedPixDataModule(DataConfig(root=str(fixtures["medpix"])))
    assert all(r.path.parent == fixtures["medpix"] / "images" for r in m.records("test"))
    assert read_rsieval(fixtures["rsicap"] / "RSIEval" / "annotations.json").images[0].path.is_file()
    records = read_annotations(annotation_path(synth, "test"), "test")
    assert [r.path for r in records] == [synth.resolve() / "images" / "test" / f"{r.image_id}.png" for r in records]
