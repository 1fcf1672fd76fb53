"""How the evaluated gallery is stored: memory-mapped vs in memory, fp16 vs fp32, skipped directions.

* A memory-mapped feature cache (``eval.memmap_min_mb=0``) gives exactly the ranks of an
  in-memory one (the same rows, read from the page cache).
* fp16 storage moves a first-stage score by at most ``FP16_SCORE_BOUND`` (unit vectors:
  ``|<q, g> - <fl16(q), fl16(g)>| <= sum |q_i g_i| (2u + u^2) <= 2u + u^2``, ``u = 2^-11``, by
  Cauchy-Schwarz; a max over vectors moves by no more than its largest term), so a query's
  rank may change only where the fp32 scores of its best relevant item and of some
  competitor lie within twice that bound: the test checks exactly that, query by query.
* A direction without any relevant item is skipped (and said), not scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmark.cli import app
from benchmark.config import ConfigError
from benchmark.metrics import RetrievalMetric
from benchmark.tasks.retrieval import evaluated_directions
from datamodules.base import EvalSet, Relevance
from lightning_modules.base import Encoded, blockwise_over_gallery, max_sim
from tests.test_blip2 import SMALL
from tests.tiny_blip2 import save_tiny_blip2

runner = CliRunner()
U = 2.0**-11
FP16_SCORE_BOUND = 2 * U + U * U


@pytest.fixture(scope="module")
def cached_blip2(tmp_path_factory) -> Path:
    """A tiny random BLIP2 checkpoint that reads its vision tokens from the feature cache."""
    path = save_tiny_blip2(
        tmp_path_factory.mktemp("blip2") / "ckpt",
        ["a red circle on a blue background", "two small green squares"],
        8,
        k_test=4,
    )
    config = json.loads((path / "suite_config.json").read_text())
    (path / "suite_config.json").write_text(json.dumps(config | {"cache_features": True}))
    return path


def _run(tmp_path: Path, checkpoint: Path, tag: str, *sets: str) -> dict:
    args = [
        "run",
        "--model",
        "blip2",
        "--checkpoint",
        str(checkpoint),
        "--no-progress",
        "--tag",
        tag,
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        f"data.options={SMALL}",
        "--set",
        "eval.measure=false",
    ]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / "results" / f"blip2__synthetic__{tag}.json").read_text())


def test_memory_mapped_gallery_gives_the_in_memory_ranks(cached_blip2, tmp_path):
    memory = _run(tmp_path, cached_blip2, "memory")
    mapped = _run(tmp_path, cached_blip2, "mapped", "eval.memmap_min_mb=0")
    assert memory["provenance"]["features"]["test"]["memory_mapped"] is False
    assert mapped["provenance"]["features"]["test"]["memory_mapped"] is True
    assert mapped["provenance"]["features"]["test"]["hit"] is True  # the file the first run wrote
    assert mapped["per_query"] == memory["per_query"] and mapped["metrics"] == memory["metrics"]
    assert memory["evaluation"] == {"precision": "32-true", "storage_dtype": "float32", "world_size": 1}
    n = memory["provenance"]["n_gallery_images"]
    # index: 8 query outputs x 16 dims, plus the cached tokens (5 x 32) per image, in float32
    assert memory["metrics"]["index/bytes_per_image"] == 4 * (8 * 16 + 5 * 32)
    assert memory["metrics"]["index/bytes"] == n * memory["metrics"]["index/bytes_per_image"]


def test_fp16_storage_halves_the_index(cached_blip2, tmp_path):
    full = _run(tmp_path, cached_blip2, "fp32")
    half = _run(tmp_path, cached_blip2, "fp16", "eval.storage_dtype=float16")
    assert (
        half["evaluation"]["storage_dtype"] == "float16"
        and half["provenance"]["features"]["test"]["dtype"] == "float16"
    )
    assert half["metrics"]["index/bytes_per_image"] * 2 == full["metrics"]["index/bytes_per_image"]
    assert half["metrics"]["t2i/n_queries"] == full["metrics"]["t2i/n_queries"] > 0


def _eval_set(relevance: Relevance, n_images: int, n_queries: int) -> EvalSet:
    empty = Relevance.from_lists([[] for _ in range(n_images)], n_images)
    return EvalSet(
        split="test",
        image_ids=tuple(str(i) for i in range(n_images)),
        image_paths=tuple(Path(f"{i}.png") for i in range(n_images)),
        instructions=("q",) * n_queries,
        captions=("q",) * n_queries,
        complexity=np.ones(n_queries, dtype=np.int64),
        source=np.full(n_queries, -1, dtype=np.int64),
        relevance={"t2i": relevance, "i2t": relevance.transpose(), "i2i": empty},
        annotations_sha256="x",
    )


def test_fp16_ranks_change_only_at_near_ties():
    g = torch.Generator().manual_seed(0)
    n_q, n_g, t, d = 400, 300, 4, 32
    queries = torch.nn.functional.normalize(torch.randn(n_q, d, generator=g), dim=-1)
    # galleries of near-duplicates: many near-ties, so fp16 does change some ranks
    base = torch.randn(n_g // 3, t, d, generator=g)
    gallery = torch.nn.functional.normalize(base.repeat(3, 1, 1) + 1e-3 * torch.randn(n_g, t, d, generator=g), dim=-1)
    relevance = Relevance.from_lists([[i % n_g] for i in range(n_q)], n_g)

    def score(q: Encoded, gal: Encoded) -> torch.Tensor:
        return blockwise_over_gallery(max_sim, q, gal, "cpu")

    ranks = {}
    for dtype in (torch.float32, torch.float16):
        metric = RetrievalMetric(_eval_set(relevance, n_g, n_q), score, directions=("t2i",), storage_dtype=dtype)
        metric.update_images(torch.arange(n_g), Encoded(gallery))
        metric.update_texts(torch.arange(n_q), Encoded(queries))
        metric.compute()
        ranks[dtype] = metric.per_query["t2i/rank"]
    changed = np.flatnonzero(ranks[torch.float32] != ranks[torch.float16])
    assert len(changed) > 0  # the near-duplicates make near-ties: the bound is exercised
    exact = score(Encoded(queries), Encoded(gallery)).double()
    for q in changed:
        best = exact[q, q % n_g]
        others = torch.cat([exact[q, : q % n_g], exact[q, q % n_g + 1 :]])
        assert float((others - best).abs().min()) <= 2 * FP16_SCORE_BOUND, int(q)


def test_a_direction_without_relevance_is_skipped(capsys):
    n_images, n_queries = 3, 4
    t2i = Relevance.from_lists([[i % n_images] for i in range(n_queries)], n_images)
    es = _eval_set(t2i, n_images, n_queries)
    assert evaluated_directions(es, ("t2i", "i2t", "i2i")) == (("t2i", "i2t"), ("i2i",))
    assert "i2i" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no relevant item"):
        evaluated_directions(es, ("i2i",))
