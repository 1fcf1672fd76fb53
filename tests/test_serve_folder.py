"""``bench serve``'s loading with a real (untrained, tiny) CLIP on a user's ``folder`` dataset:
the model through ``--checkpoint``, the gallery encoded once and read back from the disk cache
on a restart, search and thumbnails from inside the data root (seconds: nothing is trained)."""

from __future__ import annotations

from dataclasses import replace

from fastapi.testclient import TestClient

from benchmark.config import from_dict
from benchmark.feedback.config import FeedbackConfig
from benchmark.registry import DATASETS, MODELS
from benchmark.run_flags import CliConfig
from benchmark.serve.app import create_app
from benchmark.serve.config import ServeConfig
from benchmark.serve.server import build_state
from tests.folder_fixtures import write_folder


def test_a_checkpoint_served_on_a_folder_encodes_its_gallery_once(tmp_path):
    root = tmp_path / "photos"
    write_folder(root, 40, split=True)
    given = {
        "model": "clip",
        "dataset": "folder",
        "data_root": str(root),
        "cache_dir": str(tmp_path / "cache"),
        "results_dir": str(tmp_path / "results"),
    }
    base = CliConfig(given=given).build()
    model_cls = MODELS.get("clip")
    dm = DATASETS.get("folder")(replace(base.data, root=str(root)), seed=0)
    dm.prepare_data()
    model = model_cls.create(
        from_dict(model_cls.Config, base.model_args, "model_args"), base.train.optim, dm.vocabulary_texts()
    )
    ckpt = tmp_path / "ckpt"
    model.save_checkpoint(ckpt)

    cfg = CliConfig(given=given | {"checkpoint": str(ckpt)}).build()
    first = build_state(cfg, FeedbackConfig(), ServeConfig(top_k=3))
    assert first.loaded is not None, first.unavailable
    info = first.loaded.info
    assert info["gallery_encoded_now"] and info["dataset"] == "folder" and info["split"] == "test"
    again = build_state(cfg, FeedbackConfig(), ServeConfig(top_k=3))
    assert again.loaded is not None and not again.loaded.info["gallery_encoded_now"]
    assert again.loaded.info["gallery_cache"] == info["gallery_cache"]
    a, b = first.loaded.searcher.gallery.encoded, again.loaded.searcher.gallery.encoded
    assert a.emb.shape == b.emb.shape and (a.emb == b.emb).all()

    with TestClient(create_app(again)) as c:
        v = c.post("/api/search", json={"query": "please find a beach"}).json()
        assert len(v["results"]) == min(3, info["n_images"]) and v["query_length"] is None
        r = c.get(v["results"][0]["thumb"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        ids = {x["image_id"] for x in v["results"]}
        assert all(i.startswith("photos/") for i in ids)
