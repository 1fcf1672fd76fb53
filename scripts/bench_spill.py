"""Host memory of the evaluation's gallery tables (embeddings, reduced tokens): in memory vs spilled to disk.

DynamicViT and CrossGET re-rank with reduced ViT-g tokens that reach the metric with every
encoded batch (no feature cache: they depend on trained parameters). This benchmark feeds a
:class:`~benchmark.metrics.RetrievalMetric` the way ``RetrievalEvaluator.test_step`` does,
with ViT-g shapes and random values (ranks are meaningless; memory and time are not): per
gallery image 32 x 256 ITC embeddings and ``--tokens`` x 1,409 reduced tokens (the last channel
is the packed attention bias), fp16 as stored at full size; text queries of 256. The score is
ITC max-sim (the models' block-wise first stage), then the top ``--k`` of each query re-scored
from its items' token rows (what re-ranking reads; a mean over the tokens stands in for the ITM
pass). Two arms run side by
side, each in a fresh process: ``memory`` (the fields kept in host memory, as below
``eval.memmap_min_mb``) and ``spill`` (every per-item field -- embeddings, tokens -- in a file,
:mod:`benchmark.metrics.spill`).
Per arm: peak anonymous memory (``RssAnon``, what the process cannot give back), peak
``VmRSS``, wall time of feeding and of scoring; and whether both arms gave the same ranks.

``--target feedback`` measures the gallery of ``bench feedback`` and ``bench serve`` instead:
the same encodings, produced batch by batch by a stand-in model (rows seeded by the item index)
through :func:`benchmark.feedback.gallery_encoding.encode_gallery` -- held in memory (``memory``,
below ``eval.memmap_min_mb``) or written to a scratch file and mapped (``spill``) -- then the
queries scored against it in chunks of 256 as the feedback rounds score them.

    python scripts/bench_spill.py --n 4000 --tokens 257 --queries 2000 --k 16
    python scripts/bench_spill.py --target feedback --n 4000 --tokens 257 --queries 2000 --k 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmark.metrics import RetrievalMetric  # noqa: E402
from benchmark.metrics.spill import SpillConfig  # noqa: E402
from benchmark.rss_sampler import read_rss  # noqa: E402
from datamodules.base import Relevance  # noqa: E402
from lightning_modules.base import Encoded, blockwise_over_gallery, max_sim  # noqa: E402

DIM, QUERY_TOKENS, EMBED = 1409, 32, 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="gallery images")
    p.add_argument(
        "--tokens",
        type=int,
        default=257,
        help="reduced tokens per image (257: none dropped; 0: none, as BLIP-2's "
        "gallery, whose tokens come from the feature cache)",
    )
    p.add_argument("--queries", type=int, default=2000, help="text queries (t2i only)")
    p.add_argument("--k", type=int, default=16, help="items re-scored per query from their token rows")
    p.add_argument("--batch", type=int, default=256, help="gallery items per update")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--target",
        choices=["eval", "feedback"],
        default="eval",
        help="the evaluation's metric tables, or the gallery of bench feedback / serve",
    )
    p.add_argument("--arm", choices=["memory", "spill"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, lo in (("n", 1), ("tokens", 0), ("queries", 1), ("k", 1), ("batch", 1), ("threads", 1)):
        if getattr(args, name) < lo:
            p.error(f"--{name} must be >= {lo}")
    return args


class Peaks:
    """Largest ``RssAnon`` and ``VmRSS`` seen, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        r = read_rss()
        self.anon, self.rss = max(self.anon, r.get("anon_bytes", 0)), max(self.rss, r.get("rss_bytes", 0))

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class EvalSet:
    def __init__(self, n: int, q: int) -> None:
        self.n_images, self.n_queries, self.source = n, q, None
        self.relevance = {"t2i": Relevance.from_lists([[i % n] for i in range(q)], n)}


def rerank_score(k: int):
    def score(queries: Encoded, gallery: Encoded) -> torch.Tensor:
        scores = blockwise_over_gallery(max_sim, queries, gallery, "cpu")  # as the models' first stage
        if not gallery.extra:
            return scores
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        flat = top.flatten()
        bonus = torch.empty(len(flat))
        for lo in range(0, len(flat), 128):  # what re-ranking reads, one ITM batch of token rows at a time
            bonus[lo : lo + 128] = gallery.extra["tokens"][flat[lo : lo + 128]].float().mean(dim=(1, 2))
        return scores.scatter_add(1, top, 1e-3 * bonus.reshape(top.shape))

    return score


class GalleryModel:
    """Stands in for a model in :func:`encode_gallery`: the 'pixels' are the items' indices and
    each row is drawn from a generator seeded by its index (the same rows in every arm)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def image_transform(self) -> None:
        return None

    def encode_images(self, index: torch.Tensor) -> Encoded:
        emb = torch.empty(len(index), QUERY_TOKENS, EMBED, dtype=torch.float16)
        tokens = torch.empty(len(index), self.tokens, DIM, dtype=torch.float16)  # one fp16 batch, as a model's output
        for j, i in enumerate(index.tolist()):
            g = torch.Generator().manual_seed(i)
            emb[j] = torch.nn.functional.normalize(torch.randn(QUERY_TOKENS, EMBED, generator=g), dim=-1)
            if self.tokens:
                tokens[j] = torch.randn(self.tokens, DIM, generator=g)
        return Encoded(emb, extra={"tokens": tokens} if self.tokens else None)


class GalleryData:
    """Stands in for the DataModule: the gallery loader serves index batches in order."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def eval_set(self) -> EvalSet:
        return EvalSet(self.n, 1)

    def set_transform(self, transform: object) -> None:
        pass

    def set_item_loader(self, loader: object) -> None:
        pass

    def gallery_dataloader(self):
        for lo in range(0, self.n, self.batch):
            index = torch.arange(lo, min(self.n, lo + self.batch))
            yield index, index


def feedback_arm(args: argparse.Namespace) -> dict:
    from benchmark.feedback.gallery_encoding import encode_gallery

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(args.queries, EMBED, generator=g), dim=-1).half()
    score = rerank_score(args.k)
    ranks = np.empty(args.queries, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        before = read_rss()
        with Peaks() as peaks:
            start = time.perf_counter()
            gallery = encode_gallery(
                GalleryModel(args.tokens),
                GalleryData(args.n, args.batch),
                "cpu",
                tmp,
                memmap_min_mb=0.0 if args.arm == "spill" else float(1 << 30),
            )
            fed = time.perf_counter() - start
            left = sorted(p.name for p in Path(tmp).rglob("*") if p.is_file())
            start = time.perf_counter()
            for lo in range(0, args.queries, 256):
                q = torch.arange(lo, min(args.queries, lo + 256))
                s = score(Encoded(texts[q]), gallery)
                own = s[torch.arange(len(q)), q % args.n]
                ranks[q.numpy()] = (s > own[:, None]).sum(dim=1).numpy() + 1
            scored = time.perf_counter() - start
    np.save(args.out.with_suffix(".npy"), ranks)
    if left:
        raise RuntimeError(f"files left in the cache folder: {left}")
    table = sum(t.numel() * t.element_size() for t in [gallery.emb, *(gallery.extra or {}).values()])
    return arm_row(args, peaks, before, fed, scored, table)


def arm(args: argparse.Namespace) -> dict:
    if args.target == "feedback":
        return feedback_arm(args)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        spill = SpillConfig(Path(tmp), 0) if args.arm == "spill" else None
        metric = RetrievalMetric(
            EvalSet(args.n, args.queries),
            rerank_score(args.k),
            directions=("t2i",),
            storage_dtype=torch.float16,
            spill=spill,
        )
        before = read_rss()
        with Peaks() as peaks:
            start = time.perf_counter()
            for lo in range(0, args.n, args.batch):
                hi = min(args.n, lo + args.batch)
                emb = torch.nn.functional.normalize(torch.randn(hi - lo, QUERY_TOKENS, EMBED, generator=g), dim=-1)
                extra = {"tokens": torch.randn(hi - lo, args.tokens, DIM, generator=g)} if args.tokens else None
                metric.update(torch.arange(lo, hi), Encoded(emb, extra=extra), "image")
            texts = torch.nn.functional.normalize(torch.randn(args.queries, EMBED, generator=g), dim=-1)
            metric.update(torch.arange(args.queries), Encoded(texts), "text")
            fed = time.perf_counter() - start
            start = time.perf_counter()
            metrics = metric.compute()
            scored = time.perf_counter() - start
        np.save(args.out.with_suffix(".npy"), metric.per_query["t2i/rank"])
    return arm_row(args, peaks, before, fed, scored, metrics["index/bytes"])


def arm_row(args: argparse.Namespace, peaks: Peaks, before: dict, fed: float, scored: float, table: int) -> dict:
    return {
        "arm": args.arm,
        "peak_anon_bytes": peaks.anon,
        "peak_rss_bytes": peaks.rss,
        "anon_before_bytes": before.get("anon_bytes", 0),
        "feed_s": fed,
        "score_s": scored,
        "index_bytes": table,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.arm:
        args.out.write_text(json.dumps(arm(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("memory", "spill"):
            out = Path(tmp) / f"{name}.json"
            cmd = [
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
                "--arm",
                name,
                "--out",
                str(out),
            ]
            subprocess.run(cmd, check=True)
            rows.append(json.loads(out.read_text()) | {"rank": np.load(out.with_suffix(".npy"))})
    gib = 2**30
    table_gib = args.n * args.tokens * DIM * 2 / gib
    emb_gib = args.n * QUERY_TOKENS * EMBED * 2 / gib
    print(f"gallery {args.n} images: {QUERY_TOKENS} x {EMBED} fp16 embeddings = {emb_gib:.2f} GiB, {args.tokens} x {DIM} "
          f"fp16 tokens = {table_gib:.2f} GiB; "
          f"{args.queries} queries, top {args.k} re-scored; {args.threads} threads")  # fmt: skip
    print(
        "| arm | RssAnon before GiB | peak RssAnon GiB | growth GiB | peak VmRSS GiB | feed s | score s | index GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["growth"] = r["peak_anon_bytes"] - r["anon_before_bytes"]
        print(f"| {r['arm']} | {r['anon_before_bytes'] / gib:.2f} | {r['peak_anon_bytes'] / gib:.2f} | "
              f"{r['growth'] / gib:.2f} | {r['peak_rss_bytes'] / gib:.2f} | {r['feed_s']:.1f} | "
              f"{r['score_s']:.2f} | {r['index_bytes'] / gib:.2f} |")  # fmt: skip
    mem, sp = rows
    print(f"RssAnon growth spill / memory: {sp['growth'] / mem['growth']:.3f}; "
          f"score time spill / memory: {sp['score_s'] / mem['score_s']:.2f}; "
          f"same ranks: {np.array_equal(mem['rank'], sp['rank'])}")  # fmt: skip


if __name__ == "__main__":
    main()
