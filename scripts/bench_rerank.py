"""Cost of ITM re-ranking at several ``k_test``, side by side in one process (issue 28 item 2).

A trained tiny checkpoint of the BLIP2 family (``blip2``, ``ours``, ``dynamicvit``,
``crossget``) is loaded with the run's DataModule; the SynthScenes test gallery is encoded
once, and ``--n-queries`` test instructions (plus ``--n-images`` gallery images as
image-to-text queries) are encoded once. Then ``model.score`` -- the ITC first stage and the
top ``k`` re-scored by ITM, exactly as the evaluation calls it -- is timed for each ``k`` of
``--ks`` in alternating rounds (``--rounds``; the median of the rounds), so background load
hits every k alike. Printed per k: seconds for the timed queries, seconds per re-scored pair,
the ratio to the smallest k > 0, and the extrapolation to the whole test split (5,000 text and 1,000
image queries) -- an estimate of ``score_and_rank_s``, which also holds the ranking and metric.

Example::

    INSTRUCTSEE_CACHE=/tmp/itm-cache python scripts/bench_rerank.py --model blip2 \\
        --checkpoint <cache>/checkpoints/blip2__synthetic__tiny__<hash> --ks 0 4 16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.config import default_cache_dir  # noqa: E402
from benchmark.store import checkpoint_with_data  # noqa: E402
from lightning_modules.base import Encoded  # noqa: E402


def encode(model, dm, n_images: int, n_queries: int) -> tuple[Encoded, Encoded]:
    """The test gallery (every image) and the first ``n_queries`` test instructions, encoded as
    the evaluation encodes them (the model's item loader: cached frozen tokens where it has one)."""
    images = [model.encode_images(items) for _, items in dm.gallery_dataloader("test")]
    es = dm.eval_set("test")
    step = dm.config.eval_batch_size
    texts = [
        model.encode_texts(list(es.instructions[s : s + step])) for s in range(0, min(n_queries, es.n_queries), step)
    ]
    gallery = Encoded.cat(images)
    return gallery, Encoded.cat(texts)[:n_queries]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="blip2")
    ap.add_argument("--checkpoint", type=Path, required=True, help="a trained suite checkpoint folder")
    ap.add_argument("--ks", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--n-queries", type=int, default=500, help="text queries timed (t2i)")
    ap.add_argument("--n-images", type=int, default=100, help="image queries timed (i2t)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    if min(args.ks) < 0 or args.n_queries < 1 or args.n_images < 1 or args.rounds < 1:
        ap.error("--ks must be >= 0; --n-queries, --n-images and --rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, dm = checkpoint_with_data(args.model, args.checkpoint, args.cache_dir or default_cache_dir())
    base = model.config
    with torch.inference_mode():
        gallery, texts = encode(model, dm, args.n_images, args.n_queries)
        image_queries = gallery[: args.n_images]
        calls = {"t2i": (texts, gallery), "i2t": (image_queries, texts)}
        times: dict[tuple[int, str], list[float]] = {(k, d): [] for k in args.ks for d in calls}
        for _ in range(args.rounds):
            for k in args.ks:
                model.config = dataclasses.replace(base, k_test=k)
                for d, (queries, items) in calls.items():
                    t = time.perf_counter()
                    model.score(queries, items)
                    times[k, d].append(time.perf_counter() - t)
    model.config = base
    n_q, n_i = len(texts), len(image_queries)
    med = {key: statistics.median(v) for key, v in times.items()}
    total = {k: med[k, "t2i"] + med[k, "i2t"] for k in args.ks}
    # the whole test split: 5,000 text queries and 1,000 image queries, each re-ranking k items
    # (the ITC part, small beside the ITM pairs, is scaled the same way)
    whole = {k: med[k, "t2i"] * 5000 / n_q + med[k, "i2t"] * 1000 / n_i for k in args.ks}
    ref_k = min((k for k in args.ks if k > 0), default=args.ks[0])
    first = total[ref_k]
    print(
        f"{args.model}: {n_q} text queries x {len(gallery)} images + {n_i} image queries x {n_q} texts; "
        f"threads {torch.get_num_threads()}; median of {args.rounds} alternating rounds"
    )
    print(f"| k_test | s (timed queries) | ms per pair | ratio to k={ref_k} | est. whole test split s |")
    print("|---:|---:|---:|---:|---:|")
    itc = total.get(0)
    for k in args.ks:
        pairs = n_q * min(k, len(gallery)) + n_i * min(k, n_q)
        per_pair = (total[k] - itc) / pairs * 1e3 if itc is not None and pairs else float("nan")
        print(f"| {k} | {total[k]:.2f} | {per_pair:.3f} | {total[k] / first:.2f} | {whole[k]:.1f} |")


if __name__ == "__main__":
    main()
