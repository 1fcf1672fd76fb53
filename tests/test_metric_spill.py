"""Per-item fields spilled to disk (``benchmark/metrics/spill.py``) give the in-memory numbers.

A score that reads the gallery's extra field (as re-ranking reads its tokens) ranks with it, so a
wrong, missing or misplaced spilled row changes the metrics: the spilled and the in-memory
metric must agree bit for bit, whatever the arrival order and with padded repeats. One process
unlinks the file as soon as it is mapped; the 2-process case is in ``tests/test_metric_ddp.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.metrics import RetrievalMetric
from benchmark.metrics import spill as spill_module
from benchmark.metrics.spill import SpillConfig, SpilledTable, sweep_stale
from lightning_modules.base import Encoded, max_sim
from lightning_modules.components import feature_cache
from lightning_modules.components.feature_cache import CacheSpaceError
from tests.test_metric_collect import _fill
from tests.test_metrics import embeddings, small_eval_set


def reading_score(queries: Encoded, gallery: Encoded) -> torch.Tensor:
    """ITC-like max_sim plus a per-item bias read from the ``tok`` rows of each side."""
    scores = max_sim(queries, gallery)
    if gallery.extra:
        scores = scores + 0.5 * gallery.extra["tok"].float().mean(dim=(1, 2))[None, :]
    if queries.extra:
        scores = scores * (1 + queries.extra["tok"].float()[:, 0, :1].abs())
    return scores


def _data(es):
    g = torch.Generator().manual_seed(3)
    img = Encoded(
        embeddings(es.n_images, 1, tokens=3),
        torch.full((es.n_images,), 2),
        extra={"tok": torch.randn(es.n_images, 5, 7, generator=g)},
    )
    return img, Encoded(embeddings(es.n_queries, 2), torch.arange(es.n_queries) % 4 + 1)


def _evaluate(metric: RetrievalMetric, img: Encoded, txt: Encoded, img_order, txt_order) -> dict:
    _fill(metric, None, img, txt, img_order, txt_order)
    return metric.compute()


def test_spilled_extras_give_the_in_memory_metrics(tmp_path):
    es = small_eval_set()
    img, txt = _data(es)
    memory = RetrievalMetric(es, reading_score, chunk_size=4)
    expected = _evaluate(memory, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    rng = np.random.default_rng(5)
    spilled = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path / "spill", 0))
    order = np.concatenate([rng.permutation(es.n_images), [1, 1]])  # padded repeats, out of order
    got = _evaluate(spilled, img, txt, order, rng.permutation(es.n_queries))
    assert got == expected
    for key, value in memory.per_query.items():
        np.testing.assert_array_equal(spilled.per_query[key], value, err_msg=key)
    # the fields lived in the file, never in a gathered state; one process leaves no file behind
    assert set(spilled._spilled) == {"image_emb", "image_extra_tok", "text_emb"}
    assert "image_extra_tok" not in spilled._defaults and spilled.image_emb == [] and spilled.text_emb == []
    assert not any((tmp_path / "spill").iterdir())
    # the bias changes ranks: a score without the spilled rows would not give these numbers
    plain = _evaluate(
        RetrievalMetric(es, max_sim, chunk_size=4), img, txt, np.arange(es.n_images), np.arange(es.n_queries)
    )
    assert plain["t2i/MRR"] != expected["t2i/MRR"]


def test_a_field_below_the_threshold_stays_in_memory(tmp_path):
    es = small_eval_set()
    img, txt = _data(es)
    tables = {"image_extra_tok": img.extra["tok"], "image_emb": img.emb, "text_emb": txt.emb}
    largest = max(t.numel() * 4 for t in tables.values())  # float32
    metric = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path, largest + 1))
    _evaluate(metric, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    assert metric._spilled == {} and "image_extra_tok" in metric._defaults
    at = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path, largest))
    _evaluate(at, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    assert set(at._spilled) == {name for name, t in tables.items() if t.numel() * 4 == largest}


def test_rows_are_written_at_their_index_and_the_file_goes_once_published(tmp_path):
    path = tmp_path / "t.bin"
    table = SpilledTable(path, 6, (3, 5), torch.bfloat16)
    assert table.stride_bytes == table.row_bytes == 30  # one machine: rows packed
    rows = torch.arange(3 * 15, dtype=torch.float32).reshape(3, 3, 5)
    table.write(torch.tensor([4, 1, 2]), rows)  # 1, 2: one run of consecutive rows
    assert path.exists()
    table.publish()
    assert not path.exists()  # mapped: the name is no longer needed, a crash while scoring leaves nothing
    out = table.table()
    assert out.shape == (6, 3, 5) and out.dtype == torch.bfloat16
    for i, row in zip([4, 1, 2], rows, strict=True):
        assert torch.equal(out[i].float(), row)
    assert not out[0].any() and not out[5].any()
    with pytest.raises(RuntimeError, match="write after publish"):
        table.write(torch.tensor([0]), rows[:1])


def test_across_machines_rows_are_page_aligned_and_every_process_must_have_finished(tmp_path, monkeypatch):
    table = SpilledTable(tmp_path / "t.bin", 6, (3, 5), torch.float16, several_machines=True)
    assert table.stride_bytes % 4096 == 0  # a row starts on a page: no page holds two processes' rows
    rows = torch.randn(2, 3, 5)
    table.write(torch.tensor([5, 0]), rows)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        table.write(torch.tensor([6]), rows[:1])
    with pytest.raises(ValueError, match="shape"):
        table.write(torch.tensor([0]), torch.zeros(1, 5, 3))
    table.publish()  # one process: its own done-file is there
    assert torch.equal(table.table()[5], rows[0].half()) and torch.equal(table.table()[0], rows[1].half())
    assert not any(tmp_path.iterdir())  # the file and its done-file removed
    # a second machine whose done-file never shows up: the folder is not shared
    other = SpilledTable(tmp_path / "u.bin", 2, (4,), torch.float32, several_machines=True)
    Path(f"{other.path}.done-0").touch()
    monkeypatch.setattr(spill_module, "DONE_WAIT_S", 0.0)
    with pytest.raises(RuntimeError, match=r"rows of 1 of 2 processes never appeared.*shared by all of them"):
        other._check_done(2)


def test_stale_files_of_dead_evaluations_are_swept_and_live_ones_kept(tmp_path):
    old = time.time() - 2 * spill_module.STALE_AFTER_S
    dead = tmp_path / "dead.bin"
    dead.write_bytes(b"x")
    Path(f"{dead}.done-0").touch()
    os.utime(dead, (old, old))
    live = SpilledTable(tmp_path / "live.bin", 2, (4,), torch.float32)  # holds its lock
    os.utime(live.path, (old, old))
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"x")
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists() and not Path(f"{dead}.done-0").exists()
    assert live.path.exists() and fresh.exists()
    live.remove()
    assert not live.path.exists()


def test_a_disk_that_cannot_take_the_table_is_refused_before_writing(tmp_path, monkeypatch):
    free = type("Usage", (), {"free": 10 << 20})()
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: free)
    with pytest.raises(CacheSpaceError, match=r"evaluation spill .*spill/: 5000 items x \[257, 1409\] in float16"):
        SpilledTable(tmp_path / "spill" / "t.bin", 5000, (257, 1409), torch.float16)
    assert not (tmp_path / "spill" / "t.bin").exists()


def test_spill_config_bounds(tmp_path):
    with pytest.raises(ValueError, match="min_bytes"):
        SpillConfig(tmp_path, -1)


def test_across_machines_small_rows_stay_in_memory(tmp_path):
    """Page-aligned 512-byte rows would take 8x their bytes: such a field is not spilled."""
    es = small_eval_set()
    img, txt = _data(es)
    metric = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path, 0))
    metric._spill_name, metric._several_machines = "aligned", True
    _evaluate(metric, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    assert metric._spilled == {}  # every row of this small set is far below a page
