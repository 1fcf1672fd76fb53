"""Per-item fields spilled to disk (``benchmark/metrics/spill.py``) give the in-memory numbers.

A score that reads the gallery's extra field (as re-ranking reads its tokens) ranks with it, so a
wrong, missing or misplaced spilled row changes the metrics: the spilled and the in-memory
metric must agree bit for bit, whatever the arrival order and with padded repeats. One process
unlinks the file as soon as it is mapped; the 2-process case is in ``tests/test_metric_ddp.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.metrics import RetrievalMetric
from benchmark.metrics import spill as spill_module
from benchmark.metrics.spill import SpillConfig, SpilledTable
from lightning_modules.base import Encoded, max_sim
from lightning_modules.components.feature_cache import CacheSpaceError
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
    for part in np.array_split(np.asarray(img_order), 4):
        idx = torch.from_numpy(part)
        metric.update_images(idx, img[idx])
    for part in np.array_split(np.asarray(txt_order), 3):
        idx = torch.from_numpy(part)
        metric.update_texts(idx, txt[idx])
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
    # the field lived in the file, never in a gathered state; one process leaves no file behind
    assert set(spilled._spilled) == {"image_extra_tok"} and "image_extra_tok" not in spilled._defaults
    assert not any((tmp_path / "spill").iterdir())
    # the bias changes ranks: a score without the spilled rows would not give these numbers
    plain = _evaluate(
        RetrievalMetric(es, max_sim, chunk_size=4), img, txt, np.arange(es.n_images), np.arange(es.n_queries)
    )
    assert plain["t2i/MRR"] != expected["t2i/MRR"]


def test_a_field_below_the_threshold_stays_in_memory(tmp_path):
    es = small_eval_set()
    img, txt = _data(es)
    whole = es.n_images * 5 * 7 * 4  # the field's table in float32
    metric = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path, whole + 1))
    _evaluate(metric, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    assert metric._spilled == {} and "image_extra_tok" in metric._defaults
    at = RetrievalMetric(es, reading_score, chunk_size=4, spill=SpillConfig(tmp_path, whole))
    _evaluate(at, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    assert set(at._spilled) == {"image_extra_tok"}


def test_rows_are_page_aligned_and_written_at_their_index(tmp_path):
    table = SpilledTable(tmp_path / "t.bin", 6, (3, 5), torch.float16)
    assert table.stride * 2 % 4096 == 0  # a row starts on a page: no page is written by two processes
    rows = torch.arange(2 * 15, dtype=torch.float32).reshape(2, 3, 5)
    table.write(torch.tensor([4, 1]), rows)
    table.publish()
    out = table.table()
    assert out.shape == (6, 3, 5) and out.dtype == torch.float16
    assert torch.equal(out[4].float(), rows[0]) and torch.equal(out[1].float(), rows[1])
    assert not out[0].any()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\)"):
        table.write(torch.tensor([6]), rows[:1])
    with pytest.raises(ValueError, match="shape"):
        table.write(torch.tensor([0]), torch.zeros(1, 5, 3))


def test_a_disk_that_cannot_take_the_table_is_refused_before_writing(tmp_path, monkeypatch):
    free = type("Usage", (), {"free": 10 << 20})()
    monkeypatch.setattr(spill_module.shutil, "disk_usage", lambda path: free)
    with pytest.raises(CacheSpaceError, match=r"evaluation spill .*spill/: 5000 items x \[257, 1409\] in float16"):
        SpilledTable(tmp_path / "spill" / "t.bin", 5000, (257, 1409), torch.float16)
    assert not (tmp_path / "spill" / "t.bin").exists()


def test_spill_config_bounds(tmp_path):
    with pytest.raises(ValueError, match="min_bytes"):
        SpillConfig(tmp_path, -1)
