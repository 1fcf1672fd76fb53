"""Time the suite's exact retrieval metrics against torchmetrics on a COCO-sized problem.

25,000 caption queries x 5,000 images (5 captions per image: query q is relevant to image
q // 5, which is also its source image), 256-d L2-normalised embeddings with non-negative
entries (a caption is its image plus non-negative noise), so every score is positive and
torchmetrics' RetrievalMRR (which treats targets scored <= 0 as non-relevant) is correct.

* ours: the full t2i computation -- chunked matmul, ranks, R@1/5/10, MRR, mean/median
  rank, Sim -- through :func:`benchmark.metrics.evaluate_direction` (also i2t, for scale);
* torchmetrics: RetrievalMRR and RetrievalHitRate(top_k=1, 5, 10) on the flattened
  (query, image) pairs of the same score matrix, the layout torchmetrics requires.

Both are checked to give the same values on the same score matrix.

    python scripts/bench_metrics.py --threads 2
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR

from benchmark.metrics import (
    dense_score_fn,
    encoded_score_fn,
    evaluate_direction,
    source_relevance,
    summarize,
    transpose_relevance,
)
from lightning_modules.base import Encoded, max_sim

KS = (1, 5, 10)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=25_000)
    p.add_argument("--gallery", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, default=4.0, help="caption noise scale (relative to the image norm)")
    p.add_argument("--skip-torchmetrics", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n_q, n_g = args.queries, args.gallery
    per_image = n_q // n_g
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, {n_q} queries x {n_g} gallery, d={args.dim}")

    g = torch.Generator().manual_seed(0)
    source = np.minimum(np.arange(n_q) // per_image, n_g - 1)
    images = F.normalize(torch.randn(n_g, args.dim, generator=g).abs(), dim=-1)
    # a caption = its image plus non-negative noise, so the task is neither trivial nor hopeless
    noise = torch.randn(n_q, args.dim, generator=g).abs() * (args.noise / args.dim**0.5)
    texts = F.normalize(images[torch.from_numpy(source)] + noise, dim=-1)
    relevance = source_relevance(source, n_g)  # one relevant image per caption: its own
    queries, gallery = Encoded(texts), Encoded(images)

    def ours() -> dict[str, float]:
        r = evaluate_direction(
            encoded_score_fn(max_sim, queries, gallery), relevance, n_queries=n_q, source=relevance,
            chunk_size=args.chunk_size,
        )  # fmt: skip
        return summarize(r, KS)

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours_summary = ours()
        times.append(time.perf_counter() - t0)
    ours_s = min(times)
    print(f"ours t2i (matmul + ranks + all metrics, chunk {args.chunk_size}): "
          f"first {times[0]:.3f} s, best of {args.repeats} {ours_s:.3f} s")  # fmt: skip
    print("  ", {k: round(v, 6) for k, v in ours_summary.items()})
    i2t_rel = transpose_relevance(relevance)
    t0 = time.perf_counter()
    evaluate_direction(
        encoded_score_fn(max_sim, gallery, queries), i2t_rel, n_queries=n_g, source=i2t_rel, chunk_size=args.chunk_size
    )
    print(f"ours i2t ({n_g} queries x {n_q} gallery): {time.perf_counter() - t0:.3f} s")
    if args.skip_torchmetrics:
        return

    # --- torchmetrics on the same (full) score matrix, as flattened pairs ------------------
    t0 = time.perf_counter()
    scores = texts @ images.T  # float32 [n_q, n_g]
    matmul_s = time.perf_counter() - t0
    # our numbers on exactly this matrix, for the agreement check
    dense = evaluate_direction(dense_score_fn(scores), relevance, n_queries=n_q, source=relevance)
    dense_summary = summarize(dense, KS)
    # how many queries have a non-relevant item tied with their positive (torchmetrics breaks
    # such ties arbitrarily, we count them against the model)
    positive = scores[torch.arange(n_q), torch.from_numpy(source)]
    ties = int(((scores == positive[:, None]).sum(1) > 1).sum())

    t0 = time.perf_counter()
    preds = scores.reshape(-1)  # a view: no copy
    target = torch.zeros(n_q, n_g, dtype=torch.long)  # int64 as torchmetrics stores it: no per-metric copy
    target[torch.arange(n_q), torch.from_numpy(source)] = 1
    target = target.reshape(-1)
    indexes = torch.arange(n_q).repeat_interleave(n_g)
    flatten_s = time.perf_counter() - t0
    gib = preds.numel() * (4 + 8 + 8) / 2**30
    print(f"flattened pairs: {preds.numel():,} (preds float32, target and indexes int64: {gib:.2f} GiB); "
          f"matmul {matmul_s:.3f} s, flatten {flatten_s:.3f} s")  # fmt: skip

    tm_values: dict[str, float] = {}
    tm_times: dict[str, float] = {}
    for name, make in [("MRR", RetrievalMRR)] + [(f"R@{k}", lambda k=k: RetrievalHitRate(top_k=k)) for k in KS]:
        t0 = time.perf_counter()
        metric = make()
        metric.update(preds, target, indexes)
        tm_values[name] = float(metric.compute())
        tm_times[name] = time.perf_counter() - t0
        del metric
        gc.collect()
        rss = peak_rss_gib()
        print(f"torchmetrics {name}: {tm_values[name]:.6f} in {tm_times[name]:.2f} s (peak RSS so far {rss:.1f} GiB)")
    tm_s = sum(tm_times.values())
    tm_full_s = tm_s + matmul_s + flatten_s

    print(f"\nours (full t2i incl. chunked matmul): {ours_s:.3f} s")
    print(f"torchmetrics MRR + HitRate@{{1,5,10}}: {tm_s:.2f} s metrics only, {tm_full_s:.2f} s incl. matmul + flatten")
    print(f"speed-up: {tm_s / ours_s:.1f}x (metrics only vs ours incl. matmul), {tm_full_s / ours_s:.1f}x (both incl.)")
    print(f"queries whose positive ties a non-relevant item: {ties}")
    tol = ties / n_q + 1e-5
    for name, value in tm_values.items():
        ours_value, chunked_value = dense_summary[name], ours_summary[name]
        print(f"  {name}: ours {ours_value:.6f} (chunked path {chunked_value:.6f}), torchmetrics {value:.6f}")
        assert abs(dense_summary[name] - value) <= tol, (name, dense_summary[name], value)
        assert abs(ours_summary[name] - dense_summary[name]) <= tol, name
    print(f"values agree (tolerance {tol:.2g}); peak RSS {peak_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
