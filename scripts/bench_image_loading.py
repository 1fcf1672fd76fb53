"""Benchmark of the image loading pipeline of the real datasets.

Generates COCO-like JPEGs (640x480, smooth photo-like content with edges and noise,
quality 90) in a temporary folder, then measures images/s of the path a run uses --
``datamodules.base.IndexedImages`` (``load_image`` + the model's ``ImageTransform(224,
224)``) behind a DataLoader -- for 0, 1 and 2 worker processes, with and without JPEG draft
decoding (``ImageTransform.draft``). Also times the pieces in one thread (decode, resize +
crop, to tensor) and the setup-time image check (``check_image``) against a header-only
``verify()``. Prints the load average, since other processes share the CPU.

Two more measurements, each side by side in one run:

* ``--check N``: the setup-time image check (``datamodules/image_checks.py``) of N small
  JPEGs, first run (every image decoded, verdicts written to the cache) against the next
  run (the cache read, every file stat-ed, none opened), and against no cache at all.
* ``--synthetic ROOT``: one epoch of the tiny SynthScenes training loader (the default
  4,000 training images of 64 px, cached in memory after their first load, batch 128) for
  each ``--workers`` count, the workers' start included; ``--epochs`` epochs each (the first
  fills the in-memory cache -- one per process: each worker fills its own -- the later ones
  read it). The annotations are read before the clock starts. ROOT holds the generated data
  (``$INSTRUCTSEE_CACHE/data``; generated there if absent).

    .venv/bin/python scripts/bench_image_loading.py            # ~1 minute on 2 cores
    .venv/bin/python scripts/bench_image_loading.py --n 200 --workers 0 2
    .venv/bin/python scripts/bench_image_loading.py --n 0 --check 3000 --synthetic $INSTRUCTSEE_CACHE/data

Target: >= 150 images/s at 224 px on a 2-core machine (the best DataLoader setting).
Exit code 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L

from datamodules.base import IndexedImages, check_image, collate_indexed, load_image
from datamodules.datamodule import DataConfig
from datamodules.image_checks import ImageCheckCache, check_images
from datamodules.synthetic.datamodule import SyntheticDataModule
from lightning_modules.components.image_transform import ImageTransform

TARGET = 150.0


def photo_like(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients, blurred blobs, hard-edged rectangles and sensor noise: JPEG-compresses
    to ~60-90 KB at quality 90 like a COCO photo, unlike flat colours or white noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [
            (x / w) * rng.uniform(80, 200) + rng.uniform(0, 50),
            (y / h) * rng.uniform(80, 200) + rng.uniform(0, 50),
            ((x + y) / (w + h)) * rng.uniform(80, 200) + rng.uniform(0, 50),
        ],
        axis=-1,
    )
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img += blob * rng.uniform(-90, 90, size=3)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        img[y0 : y0 + int(rng.integers(10, 120)), x0 : x0 + int(rng.integers(10, 160))] = rng.uniform(0, 255, 3)
    img += 0.5 * np.sin(x / rng.uniform(2, 6))[..., None] * 20  # fine texture
    img += rng.normal(0, 5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(folder: Path, n: int, size: tuple[int, int] = (640, 480), distinct: int = 50) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"COCO_val2014_{i:012d}.jpg"
        if i < distinct:
            Image.fromarray(photo_like(*size, i)).save(p, "JPEG", quality=90)
        else:  # distinct files with repeated content: generating is slower than reading
            p.write_bytes(paths[i % distinct].read_bytes())
        paths.append(p)
    return paths


def rate_loader(paths: list[Path], transform: ImageTransform, workers: int, batch: int = 32) -> float:
    ds = IndexedImages(paths, transform)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_indexed)
    t = time.perf_counter()
    n = 0
    for _, pixels in loader:
        n += len(pixels)
    return n / (time.perf_counter() - t)


def per_image_ms(fn, paths: list[Path]) -> float:
    t = time.perf_counter()
    for p in paths:
        fn(p)
    return 1000 * (time.perf_counter() - t) / len(paths)


def header_only(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()


def bench_check(n: int) -> None:
    """First (cold) vs cached (warm) image check of ``n`` small JPEGs, and no cache."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", n, size=(160, 120), distinct=50)
        cache = ImageCheckCache(Path(tmp) / "cache", Path(tmp) / "images", "bench")
        times = {}
        for name, c in (("no cache", None), ("first run (cold cache)", cache), ("next run (cached)", cache)):
            t = time.perf_counter()
            reasons = check_images(paths, cache=c)
            times[name] = time.perf_counter() - t
            assert reasons == [None] * n
        kb = cache.path.stat().st_size / 1024
        print(f"image check of {n} JPEGs 160x120 (cache file {kb:.0f} KB):")
        for name, sec in times.items():
            print(f"  {name:<24} {sec:7.3f} s  ({1e6 * sec / n:6.1f} us per image)")
        print(
            f"  speed-up of the cached run: {times['first run (cold cache)'] / times['next run (cached)']:.1f}x "
            f"over the first run, {times['no cache'] / times['next run (cached)']:.1f}x over no cache"
        )


def bench_synthetic(root: Path, workers: list[int], n_epochs: int) -> None:
    """Epoch times of the tiny SynthScenes training loader per worker count."""
    print(f"SynthScenes training loader (default options, batch 128, 64 px, in-memory cache), root {root}:")
    for w in workers:
        dm = SyntheticDataModule(DataConfig(root=str(root), batch_size=128, num_workers=w))
        dm.prepare_data()
        dm.set_transform(ImageTransform(64, 64))
        dm.records("train")  # annotations read, relevance built: not part of loading
        L.seed_everything(0, workers=True, verbose=False)
        t = time.perf_counter()
        loader = dm.train_dataloader()
        epochs = []
        for _ in range(n_epochs):
            e = time.perf_counter()
            n = sum(len(batch) for batch in loader)
            epochs.append(time.perf_counter() - e)
        total = time.perf_counter() - t
        del loader
        print(
            f"  workers={w}: epochs {' '.join(f'{e:5.2f}' for e in epochs)} s; all {n_epochs}: {total:6.2f} s "
            f"({n} items per epoch)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--size", type=int, default=224, help="output size (resize and crop)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--check", type=int, default=0, metavar="N", help="also time the cached image check of N JPEGs")
    ap.add_argument(
        "--synthetic",
        type=Path,
        default=None,
        metavar="ROOT",
        help="also time the SynthScenes training loader (data generated under ROOT)",
    )
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the SynthScenes loader per worker count")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"cpus={os.cpu_count()}  load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.check:
        bench_check(args.check)
    if args.synthetic is not None:
        bench_synthetic(args.synthetic, args.workers, args.epochs)
    if args.n < 1:
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.n)
        kb = np.mean([p.stat().st_size for p in paths[:50]]) / 1024
        print(f"{args.n} JPEGs 640x480 q90, mean {kb:.0f} KB; output {args.size} px")
        full = ImageTransform(args.size, args.size, draft=False)
        draft = ImageTransform(args.size, args.size)
        sample = paths[:100]
        for name, t in (("full decode", full), ("draft", draft)):
            dec = per_image_ms(lambda p, t=t: load_image(p, t.draft_size()), sample)
            ims = [load_image(p, t.draft_size()) for p in sample[:50]]
            tf = per_image_ms(lambda im, t=t: t(im), ims)
            print(f"  {name:<12} one thread: decode {dec:.2f} ms + transform {tf:.2f} ms per image")
        print(
            f"  setup check: header verify() {per_image_ms(header_only, sample):.2f} ms, "
            f"check_image (1/8-scale decode) {per_image_ms(check_image, sample):.2f} ms per image"
        )
        best = 0.0
        for name, t in (("full decode", full), ("draft", draft)):
            for w in args.workers:
                rate = rate_loader(paths, t, w)
                if t is draft:
                    best = max(best, rate)
                print(f"  DataLoader {name:<12} workers={w}: {rate:7.1f} images/s")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    verdict = "PASS" if best >= TARGET else "FAIL"
    print(f"best (draft, as runs load): {best:.1f} images/s -- target {TARGET:.0f}: {verdict}")
    return 0 if best >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
