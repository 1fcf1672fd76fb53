"""``RetrievalMetric._collect`` at scale: items that arrive in index order without repeats (one
process, the evaluation's ordered loaders) are used as stored -- no concatenation, no re-indexing copy. The
numbers are those of any other arrival order (bit for bit)."""

from __future__ import annotations

import numpy as np
import torch

from benchmark.metrics import RetrievalMetric
from lightning_modules.base import Encoded, max_sim
from tests.test_metrics import embeddings, reference_metrics, small_eval_set


def _fill(metric: RetrievalMetric, es, img: Encoded, txt: Encoded, img_order, txt_order) -> None:
    for part in np.array_split(np.asarray(img_order), 3):
        idx = torch.from_numpy(part)
        metric.update_images(idx, img[idx])
    for part in np.array_split(np.asarray(txt_order), 4):
        idx = torch.from_numpy(part)
        metric.update_texts(idx, txt[idx])


def test_in_order_items_are_not_copied_again():
    es = small_eval_set()
    img = Encoded(
        embeddings(es.n_images, 1, tokens=3),
        torch.full((es.n_images,), 2),
        extra={"tokens": embeddings(es.n_images, 3, tokens=2)},
    )
    txt = Encoded(embeddings(es.n_queries, 2), torch.arange(es.n_queries) % 4 + 1)
    metric = RetrievalMetric(es, max_sim, chunk_size=4)
    _fill(metric, es, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    enc, _ = metric._collect("image", es.n_images)
    assert torch.equal(enc.emb, img.emb) and torch.equal(enc.extra["tokens"], img.extra["tokens"])
    # the states' own buffers: neither concatenated nor re-indexed
    assert enc.emb.data_ptr() == metric.image_emb[0].data_ptr()
    assert enc.extra["tokens"].data_ptr() == metric.image_extra_tokens[0].data_ptr()
    assert metric.n_duplicates["images"] == 0


def test_in_order_and_shuffled_arrivals_give_identical_results():
    es = small_eval_set()
    img = Encoded(embeddings(es.n_images, 1, tokens=3), torch.full((es.n_images,), 2))
    txt = Encoded(embeddings(es.n_queries, 2), torch.arange(es.n_queries) % 4 + 1)
    ordered = RetrievalMetric(es, max_sim, chunk_size=4)
    _fill(ordered, es, img, txt, np.arange(es.n_images), np.arange(es.n_queries))
    rng = np.random.default_rng(7)
    shuffled = RetrievalMetric(es, max_sim, chunk_size=4)
    _fill(shuffled, es, img, txt, np.concatenate([rng.permutation(es.n_images), [2, 2]]), rng.permutation(es.n_queries))
    a, b = ordered.compute(), shuffled.compute()
    assert a.keys() == b.keys() == reference_metrics(es, img, txt).keys() | {"index/bytes", "index/bytes_per_image"}
    for k in a:
        assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k
    for k in ordered.per_query:
        np.testing.assert_array_equal(ordered.per_query[k], shuffled.per_query[k])
    assert shuffled.n_duplicates["images"] == 2 and ordered.n_duplicates["images"] == 0
    # computing twice changes nothing
    again = ordered.compute()
    assert all(again[k] == a[k] or (np.isnan(a[k]) and np.isnan(again[k])) for k in a)
