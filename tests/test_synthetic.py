"""Tests of the SynthScenes benchmark: determinism, captions, exact relevance, the DataModule.

Relevance is checked against an independent brute-force evaluation written here from the
definition, over the JSON that the generator wrote (not the library's own objects).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import DataError, load_image
from datamodules.datamodule import DataConfig
from datamodules.synthetic import (
    CaptionConstraints,
    SyntheticDataModule,
    SyntheticOptions,
    describe_benchmark,
    generate,
    relevance_stats,
)
from datamodules.synthetic import generation as generation_module
from datamodules.synthetic.annotations import annotation_path, read_annotations
from datamodules.synthetic.captions import make_captions
from datamodules.synthetic.generation import ensure_generated
from datamodules.synthetic.relevance import SceneIndex, caption_relevance
from datamodules.synthetic.scene import sample_scene
from datamodules.synthetic.seeding import image_rng
from datamodules.synthetic.vocabulary import (
    BACKGROUND_ATTRIBUTES,
    OBJECT_ATTRIBUTES,
    OBJECT_COLOURS,
)
from datamodules.synthetic.workers import MAX_WORKERS, fork_map, worker_count

SMALL = {"n_train": 40, "n_val": 10, "n_test": 30}
SPLITS = ("train", "val", "test")

ROW = {"top": 0, "middle": 1, "bottom": 2}
COL = {"left": 0, "center": 1, "right": 2}
RELATION_TESTS = {
    "left_of": lambda s, o: COL[s["column"]] < COL[o["column"]],
    "right_of": lambda s, o: COL[s["column"]] > COL[o["column"]],
    "above": lambda s, o: ROW[s["row"]] < ROW[o["row"]],
    "below": lambda s, o: ROW[s["row"]] > ROW[o["row"]],
}


def brute_satisfies(scene: dict, constraints: dict) -> bool:
    """The definition, on plain JSON: every object constraint on a distinct object,
    every relation on the matched objects, every background attribute."""
    if any(scene["background"][k] != v for k, v in constraints.get("background", {}).items()):
        return False
    objs, wanted = scene["objects"], constraints["objects"]
    for assignment in itertools.permutations(range(len(objs)), len(wanted)):
        if not all(all(objs[a][k] == v for k, v in oc.items()) for oc, a in zip(wanted, assignment)):
            continue
        if all(
            RELATION_TESTS[r["relation"]](objs[assignment[r["subject"]]], objs[assignment[r["object"]]])
            for r in constraints.get("relations", [])
        ):
            return True
    return False


def load_split(cache: Path, split: str) -> dict:
    return json.loads(annotation_path(cache, split).read_text())


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(SyntheticOptions(**SMALL), root)
    return root


@pytest.fixture(scope="module")
def small_cache(small_root) -> Path:
    return SyntheticOptions(**SMALL).cache_dir(small_root)


# -- options ------------------------------------------------------------------------------
def test_options_defaults_and_unknown_key():
    opts = SyntheticOptions.from_mapping({})
    assert (opts.n_train, opts.n_val, opts.n_test, opts.image_size, opts.seed) == (4000, 500, 1000, 64, 0)
    with pytest.raises(DataError, match="'data.options.n_tran'.*valid options: n_train, n_val, n_test"):
        SyntheticOptions.from_mapping({"n_tran": 3})
    for bad in ({"n_test": 0}, {"image_size": 8}, {"seed": -1}, {"max_objects": 5}, {"n_val": 2.5}, {"seed": True}):
        with pytest.raises(DataError, match="data.options"):
            SyntheticOptions.from_mapping(bad)


def test_bad_options_are_one_line_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from benchmark.cli import app

    for options, expected in (
        ('{"n_train": -5}', "SyntheticOptions.n_train must be >= 1, got -5"),
        ('{"n_trian": 5}', "unknown option 'data.options.n_trian' for dataset 'synthetic'"),
        ('{"n_train": "many"}', "data.options.n_train must be integer, got 'many'"),
    ):
        args = ["run", "--model", "clip", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
        res = CliRunner().invoke(app, [*args, "--results-dir", str(tmp_path / "r"), "--set", f"data.options={options}"])
        assert res.exit_code == 2, res.output
        assert expected in res.output and "Traceback" not in res.output


def test_cache_dir_depends_on_every_option(tmp_path):
    base = SyntheticOptions(**SMALL)
    assert base.cache_dir(tmp_path).name.startswith("synthscenes-v1-")
    others = [SyntheticOptions(**{**SMALL, "seed": 1}), SyntheticOptions(**{**SMALL, "image_size": 32})]
    assert len({o.cache_dir(tmp_path) for o in [base, *others]}) == 3


# -- determinism --------------------------------------------------------------------------
def test_same_seed_gives_same_bytes(tmp_path, small_cache):
    again = generate(SyntheticOptions(**SMALL), tmp_path)
    first, second = all_bytes(small_cache), all_bytes(again)
    assert len(first) == sum(SMALL.values()) + 3  # PNGs + 3 annotation files
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_bytes_do_not_depend_on_generation_workers(tmp_path, monkeypatch):
    """Images rendered in several forked workers, in small chunks, and the relevance
    split between them: the same files, byte for byte, as one process."""
    monkeypatch.setattr(generation_module, "CHUNK", 7)
    serial = all_bytes(generate(SyntheticOptions(**SMALL), tmp_path / "one", workers=1))
    forked = all_bytes(generate(SyntheticOptions(**SMALL), tmp_path / "three", workers=3))
    assert len(serial) == sum(SMALL.values()) + 3
    assert serial.keys() == forked.keys()
    assert [k for k in serial if serial[k] != forked[k]] == []


def test_fork_map_keeps_order_and_runs_the_initializer_per_worker():
    assert fork_map(_square_plus_offset, list(range(20)), 3, _set_offset, (100,)) == [i * i + 100 for i in range(20)]
    assert fork_map(_square_plus_offset, [3], 3, _set_offset, (1,)) == [10]  # one task: in process
    with mp.get_context("fork").Pool(1) as pool:  # a daemonic worker may not fork: it runs in process
        assert pool.apply(fork_map, (_square_plus_offset, [1, 2, 3], 2, _set_offset, (5,))) == [6, 9, 14]
    assert worker_count(5) == 5 and 1 <= worker_count() <= MAX_WORKERS
    with pytest.raises(ValueError, match="generation workers must be >= 1"):
        worker_count(0)


_offset = 0


def _set_offset(value: int) -> None:
    global _offset
    _offset = value


def _square_plus_offset(i: int) -> int:
    return i * i + _offset


def test_different_seed_gives_different_data(tmp_path, small_cache):
    other = generate(SyntheticOptions(**SMALL, seed=1), tmp_path)
    a, b = load_split(small_cache, "test"), load_split(other, "test")
    assert [i["scene"] for i in a["images"]] != [i["scene"] for i in b["images"]]
    pngs = sorted((small_cache / "images" / "test").iterdir())
    differing = [p.name for p in pngs if p.read_bytes() != (other / "images" / "test" / p.name).read_bytes()]
    assert len(differing) > len(pngs) // 2


def test_image_does_not_depend_on_split_size(tmp_path, small_cache):
    bigger = generate(SyntheticOptions(**{**SMALL, "n_test": 35}), tmp_path)
    a, b = load_split(small_cache, "test"), load_split(bigger, "test")
    assert [i["scene"] for i in a["images"]] == [i["scene"] for i in b["images"][:30]]
    name = "images/test/test_000029.png"
    assert (small_cache / name).read_bytes() == (bigger / name).read_bytes()


# -- images and scenes ---------------------------------------------------------------------
def test_images_are_rgb_with_objects_where_the_scene_says(small_cache):
    doc = load_split(small_cache, "train")
    filled = {"circle", "square", "diamond", "cross", "star"}
    checked = 0
    for image in doc["images"]:
        pixels = np.asarray(load_image(small_cache / image["file"]), dtype=np.int16)
        assert pixels.shape == (64, 64, 3)
        cells = [(o["row"], o["column"]) for o in image["scene"]["objects"]]
        assert len(set(cells)) == len(cells), "objects must lie in distinct cells"
        colours = {o["colour"] for o in image["scene"]["objects"]}
        assert image["scene"]["background"]["colour"] not in colours
        for obj in image["scene"]["objects"]:
            if obj["shape"] in filled:
                x, y = int(obj["x"] * 64), int(obj["y"] * 64)
                expected = np.asarray(OBJECT_COLOURS[obj["colour"]].rgb)
                assert np.abs(pixels[y, x] - expected).max() <= 40, (image["image_id"], obj)
                checked += 1
    assert checked > 20


# -- captions ------------------------------------------------------------------------------
def test_every_image_has_five_distinct_graded_captions(small_cache):
    for split in SPLITS:
        for image in load_split(small_cache, split)["images"]:
            caps = image["captions"]
            assert len(caps) >= 5
            assert sorted(c["complexity"] for c in caps) == [1, 2, 3, 4, 5]
            assert len({c["text"] for c in caps}) == len(caps)
            json.dumps(caps)  # JSON-serializable


def test_captions_are_satisfied_by_their_own_scene_and_match_their_constraints(small_cache):
    for split in SPLITS:
        for image in load_split(small_cache, split)["images"]:
            for cap in image["captions"]:
                assert brute_satisfies(image["scene"], cap["constraints"]), cap["text"]
                assert CaptionConstraints.from_json(cap["constraints"]).text() == cap["text"]


def test_caption_texts_read_naturally():
    c = CaptionConstraints.from_json(
        {
            "objects": [
                {"size": "large", "colour": "red", "shape": "circle"},
                {"size": "small", "colour": "blue", "shape": "square"},
                {"colour": "orange", "shape": "star"},
            ],
            "relations": [{"subject": 0, "relation": "left_of", "object": 1}],
            "background": {"pattern": "striped"},
        }
    )
    assert c.text() == (
        "a large red circle to the left of a small blue square, and an orange star, on a striped background"
    )
    assert CaptionConstraints.from_json({"objects": [{"colour": "red", "shape": "circle"}]}).text() == "a red circle"


# -- relevance ------------------------------------------------------------------------------
def test_t2i_relevance_equals_brute_force(small_cache):
    for split in SPLITS:
        images = load_split(small_cache, split)["images"]
        for image in images:
            for cap in image["captions"]:
                expected = [im["image_id"] for im in images if brute_satisfies(im["scene"], cap["constraints"])]
                assert cap["relevant_image_ids"] == expected, cap["text"]
                assert image["image_id"] in cap["relevant_image_ids"]


def test_scene_index_equals_brute_force_on_random_constraints():
    rng = np.random.default_rng(123)
    scenes = [sample_scene(image_rng(5, "val", i, "scene")) for i in range(150)]
    scene_json = [s.to_json() for s in scenes]
    index = SceneIndex(scenes)
    for _ in range(300):
        n_obj = int(rng.integers(1, 4))
        objects = []
        for _ in range(n_obj):
            names = [a for a in OBJECT_ATTRIBUTES if rng.random() < 0.5] or ["shape"]
            objects.append({a: str(rng.choice(OBJECT_ATTRIBUTES[a])) for a in names})
        relations = []
        if n_obj >= 2 and rng.random() < 0.5:
            relations.append({"subject": 0, "relation": str(rng.choice(list(RELATION_TESTS))), "object": 1})
        background = {a: str(rng.choice(v)) for a, v in BACKGROUND_ATTRIBUTES.items() if rng.random() < 0.3}
        raw = {"objects": objects, "relations": relations, "background": background}
        expected = [i for i, s in enumerate(scene_json) if brute_satisfies(s, raw)]
        assert index.relevant(CaptionConstraints.from_json(raw)) == expected, raw


def test_i2i_relevance_is_symmetric_and_matches_definition(small_cache):
    for split in SPLITS:
        images = load_split(small_cache, split)["images"]
        kinds = {im["image_id"]: {(o["colour"], o["shape"]) for o in im["scene"]["objects"]} for im in images}
        rel = {im["image_id"]: set(im["i2i_relevant_image_ids"]) for im in images}
        for a in kinds:
            assert a not in rel[a]
            assert rel[a] == {b for b in kinds if b != a and kinds[b] == kinds[a]}
            assert all(a in rel[b] for b in rel[a])


def test_relevance_is_graded_at_default_sizes():
    """At the default split sizes simple captions match many images and complex ones few
    (scenes and captions only: no rendering needed)."""
    opts = SyntheticOptions()
    for split in ("val", "test"):
        n = opts.n_images(split)
        scenes = [sample_scene(image_rng(opts.seed, split, i, "scene")) for i in range(n)]
        caps = [make_captions(s, image_rng(opts.seed, split, i, "captions")) for i, s in enumerate(scenes)]
        flat = [c for per in caps for c in per]
        counts = caption_relevance(scenes, [c for _, c in flat])
        mean = {
            lvl: float(np.mean([len(r) for (level, _), r in zip(flat, counts) if level == lvl])) for lvl in range(1, 6)
        }
        print(split, {k: round(v, 2) for k, v in mean.items()})
        assert mean[1] >= 10, mean
        assert mean[5] <= 2, mean
        assert mean[1] > mean[2] > mean[3] > mean[4] > mean[5]


# -- reading and the DataModule --------------------------------------------------------------
def to_tensor(im):
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


def test_datamodule_serves_batches_and_eval_set(small_root):
    config = DataConfig(root=str(small_root), batch_size=8, eval_batch_size=16, options=dict(SMALL))
    dm = SyntheticDataModule(config)
    assert dm.name == "synthetic" and len(dm.default_templates) >= 5
    dm.prepare_data()
    dm.set_transform(to_tensor)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    idx, pixels, texts, relevant = batch.index, batch.items, batch.texts, batch.relevant
    assert idx.dtype == torch.long and idx.shape == (8,)
    assert relevant.dtype == torch.long and relevant.shape[0] == 8
    assert pixels.shape == (8, 3, 64, 64) and pixels.dtype == torch.float32
    assert len(texts) == 8 and all(isinstance(t, str) and t for t in texts)

    records = dm.records("test")
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)
    es = dm.eval_set("test")
    assert es.n_images == 30 and es.n_queries == 150
    assert len(es.captions) == len(es.instructions) == len(es.complexity) == len(es.source) == 150
    assert set(es.complexity.tolist()) == {1, 2, 3, 4, 5}
    t2i = es.relevance["t2i"]
    assert t2i.n_queries == 150 and t2i.n_gallery == 30
    expected = [len(ids) for r in records for ids in r.relevant_images]
    assert t2i.counts().tolist() == expected
    assert all(int(es.source[q]) in t2i.row(q) for q in range(es.n_queries))
    assert np.array_equal(es.relevance["i2t"].dense(), t2i.dense().T)
    i2i = es.relevance["i2i"].dense()
    assert np.array_equal(i2i, i2i.T) and not i2i.diagonal().any()
    for q, instruction in enumerate(es.instructions):
        assert any(t.format(caption=es.captions[q]) == instruction for t in dm.default_templates)

    gidx, gpix = next(iter(dm.gallery_dataloader("test")))
    assert gpix.shape == (16, 3, 64, 64) and gidx.tolist() == list(range(16))
    qidx, qtexts = next(iter(dm.query_dataloader("test")))
    assert qidx.shape == (16,) and qtexts == list(es.instructions[:16])


def test_unknown_option_is_refused_by_the_datamodule(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        SyntheticDataModule(DataConfig(root=str(tmp_path), options={"n_images": 3}))


def test_relevance_stats_and_description(small_cache):
    stats = relevance_stats(read_annotations(annotation_path(small_cache, "train"), "train"))
    assert stats["n_images"] == 40 and set(stats["levels"]) == {1, 2, 3, 4, 5}
    assert all(v["mean_relevant"] >= 1 for v in stats["levels"].values())
    desc = describe_benchmark()
    assert desc["images"] == {"train": 4000, "val": 500, "test": 1000}
    assert len(desc["vocabulary"]["shapes"]) >= 6 and len(desc["vocabulary"]["object_colours"]) >= 6
    json.dumps(desc)


def corrupt(small_cache: Path, tmp_path: Path, edit) -> Path:
    cache = tmp_path / small_cache.name
    shutil.copytree(small_cache, cache)
    path = annotation_path(cache, "val")
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d["images"][3].pop("captions"), ["images[3]", "'captions'"]),
        (lambda d: d["images"][2]["captions"][1].update(complexity="2"), ["captions[1]", "'complexity'"]),
        (lambda d: d["images"][1]["captions"][0].update(relevant_image_ids=["nope"]), ["'relevant_image_ids'", "nope"]),
        (lambda d: d["images"][1]["captions"][0]["constraints"]["objects"][0].update(shape="blob"), ["'constraints'"]),
        (lambda d: d["images"][0]["scene"]["objects"].clear(), ["'scene'"]),
        (lambda d: d.update(split="test"), ["'split'"]),
        (lambda d: d.pop("images"), ["'images'"]),
    ],
)
def test_malformed_annotations_give_clear_errors(small_cache, tmp_path, edit, words):
    path = corrupt(small_cache, tmp_path, edit)
    with pytest.raises(DataError) as info:
        read_annotations(path, "val")
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message, message


def test_annotations_are_parsed_once_per_content(small_cache, tmp_path):
    """A second read of the same bytes returns the records parsed the first time (in a new
    list); a file rewritten in place with other bytes of the same size is parsed again."""
    path = tmp_path / "annotations" / "val.json"
    path.parent.mkdir()
    shutil.copy(annotation_path(small_cache, "val"), path)
    first, second = read_annotations(path, "val"), read_annotations(path, "val")
    assert first == second and first is not second and first[0] is second[0]
    text = path.read_text()
    assert '"format":"synthscenes"' in text
    path.write_text(text.replace('"format":"synthscenes"', '"format":"synthscenez"', 1))  # same size
    with pytest.raises(DataError, match="'format' is 'synthscenez'"):
        read_annotations(path, "val")
    path.write_text(text)
    assert read_annotations(path, "val") == first


def test_datamodule_reports_malformed_file(small_cache, tmp_path):
    corrupt(small_cache, tmp_path, lambda d: d["images"][0].pop("captions"))
    dm = SyntheticDataModule(DataConfig(root=str(tmp_path), options=dict(SMALL)))
    with pytest.raises(DataError, match="val.json.*missing field 'captions'"):
        dm.records("val")


# -- atomic generation ------------------------------------------------------------------------
def test_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    real = generation_module.render_scene
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(generation_module, "render_scene", flaky)
    opts = SyntheticOptions(**SMALL)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(opts, tmp_path)
    assert not opts.cache_dir(tmp_path).exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too

    monkeypatch.setattr(generation_module, "render_scene", real)
    assert ensure_generated(opts, tmp_path) == opts.cache_dir(tmp_path)
    assert annotation_path(opts.cache_dir(tmp_path), "test").is_file()


def test_incomplete_cache_folder_is_an_error(tmp_path):
    opts = SyntheticOptions(**SMALL)
    (opts.cache_dir(tmp_path) / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="not a complete SynthScenes folder"):
        ensure_generated(opts, tmp_path)


def test_max_eval_images_keeps_relevance_exact_on_the_cut_gallery(small_root, small_cache):
    config = DataConfig(root=str(small_root), max_eval_images=12, options=dict(SMALL))
    es = SyntheticDataModule(config).eval_set()
    images = load_split(small_cache, "test")["images"][:12]
    expected = [
        [j for j, other in enumerate(images) if brute_satisfies(other["scene"], cap["constraints"])]
        for image in images
        for cap in image["captions"]
    ]
    assert es.n_images == 12
    assert [es.relevance["t2i"].row(q).tolist() for q in range(es.n_queries)] == expected
