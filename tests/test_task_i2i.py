"""The task seam (``--task``) and ``--task i2i``: options, file names, relevance per dataset, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError, build_run_config
from datamodules.base import load_image
from datamodules.coco import CocoKarpathyDataModule
from datamodules.datamodule import DataConfig
from datamodules.i2i import ImageView, ViewImages, ViewOptions, draw_view, i2i_eval_set
from datamodules.medpix import MedPixDataModule
from datamodules.rsicap import RSICapDataModule
from datamodules.synthetic import SyntheticDataModule
from tests.fixtures_real import write_coco_karpathy, write_medpix, write_rsicap
from tests.real_helpers import bench_run

runner = CliRunner()


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, write in (("coco", write_coco_karpathy), ("medpix", write_medpix), ("rsicap", write_rsicap)):
        out[name] = tmp_path_factory.mktemp(name)
        write(out[name])
    return out


# -- the seam -------------------------------------------------------------------------------
def test_task_option_is_validated_and_named():
    with pytest.raises(ConfigError, match="task must be one of i2i, retrieval, speed, vqa, got 'caption'"):
        build_run_config({"model": "clip"}, {"task": "caption"})
    res = runner.invoke(app, ["run", "--task", "caption"])
    assert res.exit_code == 2 and "unknown task 'caption'; valid tasks: i2i, retrieval, speed, vqa" in res.output


def test_result_name_and_hashes_per_task(tmp_path):
    base = build_run_config({"model": "ours"}, {"results_dir": str(tmp_path)})
    i2i = build_run_config({"model": "ours"}, {"results_dir": str(tmp_path), "task": "i2i"})
    assert base.result_path().name == "ours__synthetic__default.json"
    assert i2i.result_path().name == "ours__synthetic__i2i__default.json"
    # retrieval keeps its hashes of before tasks (stored results stay current); another task differs
    assert "task" not in base.identity() and base.config_hash() != i2i.config_hash()
    # every task evaluates the same trained checkpoint
    assert base.training_hash() == i2i.training_hash()
    views = build_run_config({"model": "ours"}, {"task": "i2i", "task_args": {"flip": 1.0}})
    assert views.config_hash() != i2i.config_hash() and views.training_hash() == i2i.training_hash()


# -- i2i relevance per dataset --------------------------------------------------------------
def test_synthetic_i2i_is_the_scene_graph_relevance(tmp_path):
    dm = SyntheticDataModule(DataConfig(root=str(tmp_path), options={"n_train": 8, "n_val": 4, "n_test": 30}))
    es = i2i_eval_set(dm.eval_set(), dm.i2i_queries, 0, ViewOptions())
    assert es.i2i_views is None and es.relevance["i2i"].n_queries == 30
    kinds = [{(o["colour"], o["shape"]) for o in r.metadata["scene"]["objects"]} for r in dm.records("test")]
    for i, mine in enumerate(kinds):  # the other images with the same set of (colour, shape) types
        expected = [j for j, other in enumerate(kinds) if j != i and other == mine]
        assert es.relevance["i2i"].row(i).tolist() == expected
    assert es.relevance["i2i"].indptr[-1] > 0  # some images share their object types


@pytest.mark.parametrize("split", ["train", "test"])
def test_medpix_i2i_is_the_same_case(roots, split):
    dm = MedPixDataModule(DataConfig(root=str(roots["medpix"]), eval_split=split))
    records = dm.records(split)
    es = i2i_eval_set(dm.eval_set(), dm.i2i_queries, 0, ViewOptions())
    assert es.i2i_views is None
    n_with = 0
    for i, rec in enumerate(records):
        same = sorted(j for j, r in enumerate(records) if j != i and r.metadata["case_id"] == rec.metadata["case_id"])
        assert es.relevance["i2i"].row(i).tolist() == same
        n_with += bool(same)
    assert n_with > 0  # cases of two images relate
    if split == "train":  # the fixture's train split has single-image cases too: nothing relevant
        assert n_with < len(records)


@pytest.mark.parametrize("dataset, cls", [("coco", CocoKarpathyDataModule), ("rsicap", RSICapDataModule)])
def test_same_image_views_on_coco_and_rsicap(roots, dataset, cls):
    dm = cls(DataConfig(root=str(roots[dataset])))
    es = i2i_eval_set(dm.eval_set(), dm.i2i_queries, 3, ViewOptions())
    n = es.n_images
    assert len(es.i2i_views) == n and es.relevance["i2i"].n_gallery == n
    assert [es.relevance["i2i"].row(i).tolist() for i in range(n)] == [[i] for i in range(n)]
    again = i2i_eval_set(dm.eval_set(), dm.i2i_queries, 3, ViewOptions())
    other = i2i_eval_set(dm.eval_set(), dm.i2i_queries, 4, ViewOptions())
    assert again.i2i_views == es.i2i_views != other.i2i_views  # deterministic per seed
    for v in es.i2i_views:
        left, top, right, bottom = v.box
        assert 0.7 - 1e-9 <= right - left <= 0.9 + 1e-9 and left >= 0 and right <= 1 and top >= 0 and bottom <= 1
    dm.set_transform(lambda im: __import__("torch").from_numpy(np.asarray(im.resize((8, 8)))))
    loaders = dm.i2i_dataloaders(es)
    assert len(loaders) == 2 and len(loaders[1].dataset) == n


def test_a_view_is_a_crop_then_a_flip(tmp_path):
    arr = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    view = ImageView(0, (0.25, 0.2, 0.75, 0.8), flip=True)
    got = np.asarray(view.apply(load_image(path)))
    assert np.array_equal(got, arr[2:8, 5:15][:, ::-1])
    ((index, item),) = [ViewImages([path], [view], lambda im: np.asarray(im))[0]]
    assert index == 0 and np.array_equal(item, got)
    assert draw_view(0, "x", 0, ViewOptions(flip=0.0)).flip is False
    assert draw_view(0, "x", 0, ViewOptions(flip=1.0)).flip is True
    with pytest.raises(ValueError, match="task_args.crop"):
        ViewOptions(crop=(0.9, 0.5))


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["coco", "medpix"])
def test_bench_run_task_i2i_on_real_fixtures(roots, tmp_path, dataset):
    res = bench_run(tmp_path, dataset, roots[dataset], "--task", "i2i")
    assert "i2i/R@1=" in res.output
    r = json.loads((tmp_path / "results" / f"clip__{dataset}__i2i__default.json").read_text())
    assert r["task"] == "i2i" and r["config"]["task"] == "i2i"
    m = r["metrics"]
    assert not any(k.startswith(("t2i/", "i2t/")) for k in m)
    for k in ("i2i/R@1", "i2i/R@5", "i2i/R@10", "i2i/MRR"):
        assert 0 <= m[k] <= 1
    n = r["provenance"]["n_gallery_images"]
    protocol = r["provenance"]["i2i"]["protocol"]
    if dataset == "coco":  # one view per image, none skipped
        assert protocol == "augmented_view" and m["i2i/n_queries"] == n and m["i2i/n_skipped"] == 0
        assert r["provenance"]["i2i"]["views"] == {"crop": [0.7, 0.9], "flip": 0.5}
    else:  # the other images of the same case (single-image cases would be skipped)
        assert protocol == "gallery" and m["i2i/n_queries"] + m["i2i/n_skipped"] == n and m["i2i/n_queries"] > 0
    assert len(r["per_query"]["i2i/rank"]) == n and r["environment"]["torch_num_threads"] >= 1
    # the report's retrieval tables leave the i2i file out (and say so)
    from benchmark.reporting.build import write_reports
    from benchmark.reporting.options import ReportOptions

    bench_run(tmp_path, dataset, roots[dataset])  # a retrieval run beside it, same cached checkpoint
    outcome = write_reports(tmp_path / "results", tmp_path / "reports", ReportOptions(n_boot=100))
    assert any("1 result file(s) of other tasks" in n for n in outcome.notes)
    table = (tmp_path / "reports" / "results.md").read_text()
    assert table.count(f"| clip | {dataset} |") == 1
