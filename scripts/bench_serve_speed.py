"""Latency of ``bench serve`` (issue 29 item 4): first results of a query, a score-refreshing
round and an LLM-guided round (rules writer), on a 5,000-image gallery, tiny models, this CPU.

Gallery: SynthScenes' test split generated with ``n_test = 5000`` (``--set
data.options.n_test=5000``; ``n_train`` and ``n_val`` 1, since only the test split is served;
image ``i`` of a split depends only on (seed, split, i), so the first 1,000 are the default
test images). The default test split has 1,000 images, hence the larger one. Models: the
checkpoints of the default ``bench run`` configs of ``ours`` and ``blip2`` (trained on the
default SynthScenes; found by training hash, ``--train`` trains missing ones), served with
``--checkpoint`` on the 5k split -- a model is served on any registered dataset this way.

Everything goes through the app itself (FastAPI's in-process TestClient: routing, JSON in and
out, the engine), so a latency is what the page waits for, less the network of localhost:

* ``search``: ``POST /api/search`` -- encode the query, score it against the 5,000 cached
  gallery encodings with the model's own score, top-k;
* ``search_and_thumbnails``: the same plus ``GET`` of the k thumbnails (first time: read and
  encoded from the PNG files);
* ``refresh``: ``POST .../refresh`` with the top result marked not relevant and the second
  relevant (the marked items' image-image rows scored against the gallery; the server caches
  a row once scored, but here the cache is emptied before each timed round: every row is new);
* ``refresh_every_shown_marked``: the same with all k shown items marked (first half relevant,
  the rest not): the most rows a round scores;
* ``llm``: ``POST .../questions`` then ``POST .../answers`` with each question's first option
  (rules writer; a round whose writer finds nothing to ask falls back to refreshing, counted).

Each over ``--queries`` (default 20) distinct instructions of the split, after one warm-up
query; median and p95 printed and written as JSON (``--out``, atomically, paths portable, with
the suite's environment record). Also recorded: model load and gallery encoding time (the
gallery is encoded once and cached on disk; a second start reads it back).

    python scripts/bench_serve_speed.py --out results/reference/scripts/bench_serve_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.config import default_cache_dir  # noqa: E402
from benchmark.environment import environment  # noqa: E402
from benchmark.feedback.options import feedback_config  # noqa: E402
from benchmark.feedback.rowcache import RowCache  # noqa: E402
from benchmark.portable import portable  # noqa: E402
from benchmark.registry import DATASETS  # noqa: E402
from benchmark.run_flags import CliConfig  # noqa: E402
from benchmark.serve.app import AppState, create_app  # noqa: E402
from benchmark.serve.config import ServeConfig  # noqa: E402
from benchmark.serve.loading import load  # noqa: E402
from benchmark.store import data_root, ensure_checkpoint  # noqa: E402

GALLERY_SETS = ("data.options.n_train=1", "data.options.n_val=1", "data.options.n_test=5000")
TARGET_S = 1.0


def _stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"median_s": statistics.median(s), "p95_s": p95, "max_s": s[-1], "n": len(s)}


CPU: dict[str, list[float]] = {}


def _timed(fn, key: str | None = None):
    """``(fn(), wall seconds)``; with ``key``, this process's CPU seconds (all threads) are kept
    under it too: on a shared machine the wall time includes waiting for a core, the CPU time
    does not."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    if key is not None:
        CPU.setdefault(key, []).append(time.process_time() - c)
    return out, wall


def measure(model: str, args) -> dict:
    base = CliConfig(given={"model": model, "dataset": "synthetic", "cache_dir": args.cache_dir}).build()
    ckpt, _ = ensure_checkpoint(base, train=args.train)
    cfg = CliConfig(
        given={"model": model, "dataset": "synthetic", "cache_dir": args.cache_dir, "checkpoint": str(ckpt)},
        sets=GALLERY_SETS,
    ).build()
    fb = feedback_config(
        rounds=1, display=args.top_k, mode="all", llm="rules", llm_model=None, max_queries=None, sets=[]
    )
    sc = ServeConfig(port=0, top_k=args.top_k)
    loaded, start_s = _timed(lambda: load(cfg, fb, sc))
    reload_s = None
    if loaded.info["gallery_encoded_now"]:  # a restart: the gallery comes from the disk cache
        _, reload_s = _timed(lambda: load(cfg, fb, sc))
    es_queries = list(dict.fromkeys(_instructions(cfg)))[: args.queries + 1]
    out_dir = Path(args.cache_dir) / "serve" / "speed"
    client = TestClient(create_app(AppState(loaded, out_dir / f"{model}.jsonl")))
    keys = ("search", "search_and_thumbnails", "refresh", "refresh_every_shown_marked", "llm")
    times: dict[str, list[float]] = {k: [] for k in keys}
    fallbacks, lengths = 0, []
    scorer = loaded.searcher.scorer

    def cold_rows():  # no image-image row cached: every marked item's row is scored in the round
        scorer.row_cache = RowCache(scorer.n_gallery, fb.similarity.row_cache_mb)

    for n, q in enumerate(es_queries):
        r, t_search = _timed(lambda q=q: client.post("/api/search", json={"query": q}), "search")
        v = r.json()
        assert r.status_code == 200, v

        def thumbs(v=v):
            for x in v["results"]:
                assert client.get(x["thumb"]).status_code == 200

        _, t_thumbs = _timed(thumbs)
        shown = [x["index"] for x in v["results"]]
        cold_rows()
        r, t_refresh = _timed(
            lambda v=v, shown=shown: client.post(
                f"/api/searches/{v['search']}/refresh", json={"relevant": shown[1:2], "not_relevant": shown[:1]}
            ),
            "refresh",
        )
        assert r.status_code == 200, r.text
        # every shown item marked (half relevant, half not): the most image-image rows a round scores
        v3 = client.post("/api/search", json={"query": q}).json()
        shown3 = [x["index"] for x in v3["results"]]
        half = len(shown3) // 2
        cold_rows()
        r, t_refresh_all = _timed(
            lambda v3=v3, shown3=shown3, half=half: client.post(
                f"/api/searches/{v3['search']}/refresh", json={"relevant": shown3[:half], "not_relevant": shown3[half:]}
            ),
            "refresh_every_shown_marked",
        )
        assert r.status_code == 200, r.text
        # the llm round on a fresh search of the same query (the marks on its first ranking)
        v2 = client.post("/api/search", json={"query": q}).json()
        shown2 = [x["index"] for x in v2["results"]]

        def llm_round(v2=v2, shown2=shown2):
            a = client.post(
                f"/api/searches/{v2['search']}/questions", json={"relevant": shown2[1:2], "not_relevant": shown2[:1]}
            ).json()
            if a["pending"] is None:
                return a
            answers = [x["options"][0] for x in a["pending"]["questions"]]
            return client.post(f"/api/searches/{v2['search']}/answers", json={"answers": answers}).json()

        final, t_llm = _timed(llm_round, "llm")
        if n == 0:
            CPU.clear()
            continue  # warm-up
        fallbacks += final["last_round"]["fallback"] is not None
        lengths.append(v["query_length"])
        for key, t in (
            ("search", t_search),
            ("search_and_thumbnails", t_search + t_thumbs),
            ("refresh", t_refresh),
            ("refresh_every_shown_marked", t_refresh_all),
            ("llm", t_llm),
        ):
            times[key].append(t)
    stats = {k: _stats(v) for k, v in times.items()}
    cpu = {k: _stats(v) for k, v in CPU.items()}
    CPU.clear()
    return {
        "load_average_at_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "model": model,
        "n_gallery": loaded.info["n_images"],
        "top_k": args.top_k,
        "queries": len(times["search"]),
        "torch_threads": torch.get_num_threads(),
        "start_s": start_s,
        "restart_from_cached_gallery_s": reload_s,
        "gallery_encoded_in_first_start": loaded.info["gallery_encoded_now"],
        "gallery_cache": loaded.info["gallery_cache"],
        "checkpoint": str(ckpt),
        "llm_fallbacks": fallbacks,
        "query_lengths": lengths,
        "latency": stats,
        "cpu_time": cpu,
        "within_target": {k: s["median_s"] <= TARGET_S and s["p95_s"] <= TARGET_S for k, s in stats.items()},
    }


def _instructions(cfg) -> tuple[str, ...]:
    dm = DATASETS.get(cfg.dataset)(replace(cfg.data, root=data_root(cfg)), seed=cfg.seed)
    return dm.eval_set().instructions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ours,blip2")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--cache-dir", default=str(default_cache_dir()))
    p.add_argument("--train", action="store_true", help="train missing default checkpoints")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    runs = []
    for model in args.models.split(","):
        run = measure(model, args)
        runs.append(run)
        print(
            f"{model}: {run['n_gallery']} images, k={run['top_k']}, {run['queries']} queries, "
            f"{run['torch_threads']} torch threads, load average {run['load_average_at_end'][0]:.1f}; start {run['start_s']:.1f} s"
            + (
                f" (gallery encoded), restart {run['restart_from_cached_gallery_s']:.1f} s (gallery from cache)"
                if run["restart_from_cached_gallery_s"] is not None
                else " (gallery from cache)"
            )
        )
        for key, s in run["latency"].items():
            c = run["cpu_time"].get(key)
            print(
                f"  {key:<26} wall median {s['median_s'] * 1000:7.1f} ms  p95 {s['p95_s'] * 1000:7.1f} ms  "
                f"max {s['max_s'] * 1000:7.1f} ms  {'<= 1 s' if run['within_target'][key] else '> 1 s'}"
                + (f"  | CPU median {c['median_s'] * 1000:7.1f} ms  p95 {c['p95_s'] * 1000:7.1f} ms" if c else "")
            )
        print(f"  llm rounds that fell back to refreshing: {run['llm_fallbacks']} of {run['queries']}")
    out = {
        "script": "scripts/bench_serve_speed.py",
        "gallery": "SynthScenes test split generated with n_test=5000 (" + ", ".join(GALLERY_SETS) + ")",
        "target_s": TARGET_S,
        "runs": runs,
        "environment": environment(),
    }
    if args.out is not None:
        text = json.dumps(portable(out, {"cache": args.cache_dir}), indent=1, sort_keys=True) + "\n"
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
