"""Where the evaluation's peak RSS comes from, without encoding a gallery (issue 24, item 5).

Encoding 100k images through the tiny Q-Former takes minutes; the memory question is what the
metric and the scoring hold once the embeddings exist. This probe feeds a
:class:`~benchmark.metrics.RetrievalMetric` the way ``RetrievalEvaluator.test_step`` does --
batches of freshly made gallery embeddings of the model's shape (random values: ranks are
meaningless, memory and time are not) and the model's own encodings of the scale folder's
queries -- with the gallery's cached vision tokens memory-mapped from the feature cache as
``gallery_extra`` (rows ``0..N-1`` of the file ``scripts/bench_scale.py``'s run extracted), then
runs ``compute`` with the model's real ``score`` (ITC, ITM re-ranking) and its ITC variant.
RSS (``VmRSS``/``RssAnon``/``RssFile``) is sampled per stage by
:class:`benchmark.rss_sampler.RssSampler`; stages are the wrapped calls (``update``,
``_collect``, ``score``, ``itc_score``, ``rerank_topk``, ``itm_scores``; ``compute`` = the
rest of the metric's scoring loop).

    python scripts/probe_gallery_memory.py --checkpoint <blip2 or ours folder> \\
        --features <cache>/features/<file>.npy --queries-json <scale folder>/queries.json --n 30000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmark.metrics import RetrievalMetric  # noqa: E402
from benchmark.metrics import metric as metric_module  # noqa: E402
from benchmark.registry import MODELS  # noqa: E402
from benchmark.rss_sampler import RssSampler, read_rss  # noqa: E402
from datamodules.base import Relevance  # noqa: E402
from lightning_modules import blip2 as blip2_module  # noqa: E402
from lightning_modules.base import Encoded  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a blip2 or ours checkpoint folder")
    p.add_argument("--model", default="blip2", help="its registry name (blip2, ours)")
    p.add_argument("--features", type=Path, required=True, help="the gallery's cached vision tokens (.npy)")
    p.add_argument("--queries-json", type=Path, required=True, help="a scale folder's queries.json")
    p.add_argument("--n", type=int, default=30000, help="gallery images (the first rows of --features)")
    p.add_argument("--batch", type=int, default=256, help="gallery items per update, as an encoding batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between RSS samples")
    p.add_argument(
        "--read-table",
        action="store_true",
        help="read every row of the mapped vision tokens while feeding (as the evaluation's gallery "
        "loader does: the file's pages then count in RSS)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON output")
    args = p.parse_args(argv)
    for name in ("n", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if not 0.001 <= args.interval <= 10:  # also refuses NaN
        p.error("--interval must be in [0.001, 10] seconds")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    stack: list[str] = []
    sampler = RssSampler(lambda: stack[-1] if stack else "outside", interval_s=args.interval)
    times: dict[str, float] = {}

    def wrap(owner, name: str) -> None:
        fn = getattr(owner, name)

        def staged(*a, **k):
            stack.append(name)
            sampler.sample()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t
                sampler.sample()
                stack.pop()

        setattr(owner, name, staged)

    model = MODELS.get(args.model).load_checkpoint(args.checkpoint).eval()
    doc = json.loads(args.queries_json.read_text())
    texts = [q["text"] for q in doc["queries"]]
    relevant = [[j for j in q["relevant"] if j < args.n] for q in doc["queries"]]
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in relevant], out=indptr[1:])

    class ProbeSet:  # the metric's EvalStructure for t2i over the first N images
        relevance: ClassVar[dict[str, Relevance]] = {
            "t2i": Relevance(indptr, np.asarray([j for r in relevant for j in r], dtype=np.int64), args.n)
        }
        source = np.asarray([q["image"] if q["image"] < args.n else -1 for q in doc["queries"]], dtype=np.int64)
        n_images, n_queries = args.n, len(texts)

    table = torch.from_numpy(np.load(args.features, mmap_mode="r")[: args.n])  # read-only mapping (a warning)
    with torch.no_grad():
        txt = model.encode_texts(texts)
        probe = model.encode_images(table[:2].clone())  # shapes of the gallery embeddings
    # the model's methods before the metric takes ``model.score``; the metric's ``update`` and
    # ``compute`` on the instance (torchmetrics wraps them there)
    for owner, name in (
        (model, "score"),
        (model, "itc_score"),
        (model, "itm_scores"),
        (blip2_module, "rerank_topk"),
        (metric_module.RetrievalMetric, "_collect"),
    ):
        wrap(owner, name)
    metric = RetrievalMetric(
        ProbeSet(),
        score_fn=model.score,
        directions=("t2i",),
        score_variants=model.score_variants() if hasattr(model, "score_variants") else None,
        variant_directions=getattr(model, "score_variant_directions", None),
        gallery_extra={"image": {model.item_extra: table}},
    )
    wrap(metric, "update")
    wrap(metric, "compute")
    gen = torch.Generator().manual_seed(0)
    start_rss = read_rss()
    with sampler, torch.no_grad():
        for s in range(0, args.n, args.batch):
            rows = min(args.batch, args.n - s)
            emb = torch.randn((rows, *probe.emb.shape[1:]), generator=gen, dtype=probe.emb.dtype)
            lengths = None if probe.lengths is None else torch.full((rows,), int(probe.lengths[0]))
            if args.read_table:  # the gallery loader reads every row of the mapped table once
                float(table[s : s + rows].sum())
            metric.update(torch.arange(s, s + rows), Encoded(emb, lengths), "image")
        metric.update(torch.arange(len(texts)), txt, "text")
        stack.append("after update")
        sampler.sample()
        stack.pop()
        metrics = metric.compute()
    out = {
        "n": args.n,
        "model": args.model,
        "queries": len(texts),
        "index_bytes": int(metrics["index/bytes"]),
        "gallery_emb_bytes": int(args.n * probe.emb[0].numel() * probe.emb.element_size()),
        "start": start_rss,
        "by_stage": sampler.report(),
        "times_s": times,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    gib = 2**30
    print(
        f"{args.model} N={args.n}: gallery embeddings {out['gallery_emb_bytes'] / gib:.2f} GiB, index "
        f"{out['index_bytes'] / gib:.2f} GiB, start RSS {start_rss.get('rss_bytes', 0) / gib:.2f} GiB, "
        f"peak (ru_maxrss) {out['ru_maxrss_bytes'] / gib:.2f} GiB"
    )
    for row in out["by_stage"]:
        print(
            f"  {row['stage']:12s} peak RSS {row['rss_bytes'] / gib:.2f} GiB (anon {row['anon_bytes'] / gib:.2f}, "
            f"file {row['file_bytes'] / gib:.2f}); {times.get(row['stage'], 0.0):.1f} s"
        )
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)
    return out


if __name__ == "__main__":
    main()
