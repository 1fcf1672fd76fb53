"""Side-by-side time of score refreshing: the new image-image path (top-k table / rows on
demand) against the old dense gallery x gallery path (kept verbatim in
``tests/feedback_dense_reference.py``), on random galleries, every kernel.

    python scripts/bench_feedback_similarity.py --gallery 2000 --queries 1024 --rounds 5

Per kernel: the refresh arm's rounds over every chunk of queries (top ``display`` items
shown, random relevance), dense and new alternated ``--repeats`` times; prints the median
seconds of each, their ratio, and the largest score difference (must be <= 1e-6).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.feedback.arms import refreshed
from benchmark.feedback.config import RefreshConfig
from benchmark.feedback.kernels import KERNELS
from benchmark.feedback.ranking import top_shown
from benchmark.feedback.similarity import GalleryScorer
from lightning_modules.base import Encoded, max_sim
from tests.feedback_dense_reference import DenseGalleryScorer, refreshed_dense


def run(
    dense: bool,
    gallery: Encoded,
    s0: torch.Tensor,
    relevant: torch.Tensor,
    w: RefreshConfig,
    rounds: int,
    display: int,
    chunk: int,
) -> tuple[float, torch.Tensor]:
    cls = DenseGalleryScorer if dense else GalleryScorer
    scorer = cls(None, gallery, max_sim, batch_size=chunk)
    outs = []
    t = time.perf_counter()
    for start in range(0, len(s0), chunk):
        prev, rel = s0[start : start + chunk], relevant[start : start + chunk]
        excluded = torch.zeros_like(rel)
        for _ in range(rounds):
            shown = top_shown(prev, excluded, display)
            ps = rel.gather(1, shown)
            if dense:
                prev = refreshed_dense(prev, scorer.image_rows(shown.reshape(-1)).view(*shown.shape, -1), ps, w)
            else:
                prev = refreshed(prev, scorer.shown(shown), ps, w)
            excluded[torch.arange(len(shown))[:, None].expand_as(shown)[~ps], shown[~ps]] = True
        outs.append(prev)
    return time.perf_counter() - t, torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gallery", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--vectors", type=int, default=1, help="vectors per image (>1: late interaction)")
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--display", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (a.gallery, a.dim) if a.vectors == 1 else (a.gallery, a.vectors, a.dim)
    gallery = Encoded(F.normalize(torch.randn(*shape, generator=g), dim=-1))
    s0 = torch.randn(a.queries, a.gallery, generator=g)
    relevant = torch.rand(a.queries, a.gallery, generator=g) < 0.01
    print(
        f"G={a.gallery} vectors={a.vectors} dim={a.dim} Q={a.queries} chunk={a.chunk} T={a.rounds} "
        f"display={a.display} threads={torch.get_num_threads()}, median of {a.repeats}"
    )
    for kernel in KERNELS:
        w = RefreshConfig(kernel=kernel)
        times: dict[bool, list[float]] = {True: [], False: []}
        diff = 0.0
        for _ in range(a.repeats):
            td, od = run(True, gallery, s0, relevant, w, a.rounds, a.display, a.chunk)
            tn, on = run(False, gallery, s0, relevant, w, a.rounds, a.display, a.chunk)
            times[True].append(td)
            times[False].append(tn)
            diff = max(diff, float((od - on).abs().max()))
        d, n = statistics.median(times[True]), statistics.median(times[False])
        print(f"  {kernel:<8} dense {d:7.3f} s  new {n:7.3f} s  new/dense {n / d:5.2f}x  max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
