"""Scale benchmark of the evaluation path (issue 24, item 5): tiny BLIP2 and ours on SynthScenes
galleries of growing size (default 1k, 10k, 100k test images), 1,000 text queries, on this CPU.

Question: does the suite's evaluation (``RetrievalEvaluator`` through ``Trainer.test``, the
frozen-feature cache, the model's own ``score`` with its tiny ``k_test`` ITM re-ranking) stay
within memory and grow at most linearly with the gallery?

What runs, per size ``N``:

* **Data** (once per size, in this process; reused by later runs): the first ``N`` SynthScenes test images,
  rendered by the generator's own per-image function (``generation._render``: image ``i``
  depends only on (seed, split, i), so the PNGs are byte for byte those ``generate`` writes for
  ``n_test >= N``), and the first ``--queries`` captions of the split with their exact relevance
  over all ``N`` scenes (the generator's ``caption_relevance``). The full generator is not used
  at scale: it writes every caption's relevance list (5 captions per image, each relevant to a
  fixed share of the split), i.e. O(N^2) annotation bytes and relevance checks; its own time and
  annotation size are measured beside, up to ``--full-generator-max`` images.
* **Evaluation** (per model, in a fresh subprocess, so peak RSS is that of one size): the model's
  trained tiny checkpoint -- the checkpoint of its default ``bench run`` config, found by training
  hash through ``benchmark.store.ensure_checkpoint`` (``--train`` trains missing ones; or give
  ``--blip2-checkpoint`` / ``--ours-checkpoint``) -- evaluated by the runner's own ``_evaluate``
  (feature cache installed as in ``bench run``, ``Trainer.test`` of a ``RetrievalEvaluator``) on
  a DataModule that serves the folder above (:class:`ScaleScenes`), direction ``t2i`` only (``i2t``
  and ``i2i`` would be ``N``-query runs). ``eval.measure`` is off (cost measurement is not part of
  the evaluation). The model's ``itc_score`` / ``itm_scores`` / ``score`` are wrapped with timers
  to split first-stage scoring (ITC) from re-ranking (ITM passes, top-k and shift).

Recorded per (size, model): wall time per stage (data generation, feature extraction -- shared by
both models: the same frozen tower, so the second model is a cache hit --, image encoding, text
encoding, first stage, re-ranking, the ITC-only variant, metric bookkeeping), peak RSS
(``ru_maxrss`` of the child and of its children), the peak RSS of each stage (``rss_by_stage``:
:class:`benchmark.rss_sampler.RssSampler`, labelled by the innermost of ``test_step``, ``compute``,
``_collect``, ``score``, ``itc_score``, ``rerank_topk``, ``itm_scores``), index bytes (total and per image, from the
result's metrics), t2i R@1/R@5. Targets checked: peak RSS <= index bytes + 2 GB; per-query
scoring time ratio between consecutive sizes <= their size ratio; the largest size within 20
minutes (per model: extraction + evaluation; and everything for that size).

    python scripts/bench_scale.py --out results/reference/scripts/bench_scale.json
    python scripts/bench_scale.py --sizes 1000,10000 --queries 1000
    python scripts/bench_scale.py --train        # train the tiny checkpoints first if absent
    python scripts/bench_scale.py --random-init  # untrained default tiny architectures (cost only)
    python scripts/bench_scale.py --merge small.json large.json --out all.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataclasses import replace as dc_replace  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmark import runner  # noqa: E402
from benchmark.atomic import atomic_write_text  # noqa: E402
from benchmark.config import (  # noqa: E402
    ConfigError,
    build_run_config,
    default_cache_dir,
    model_defaults,
)
from benchmark.environment import environment  # noqa: E402
from benchmark.evaluation import RetrievalEvaluator  # noqa: E402
from benchmark.metrics.metric import RetrievalMetric  # noqa: E402
from benchmark.portable import portable  # noqa: E402
from benchmark.registry import MODELS as REGISTRY  # noqa: E402
from benchmark.rss_sampler import RssSampler  # noqa: E402
from benchmark.store import ensure_checkpoint, resolve_run  # noqa: E402
from benchmark.tasks.retrieval import RetrievalTask  # noqa: E402
from benchmark.training import save_atomically  # noqa: E402
from datamodules.base import CaptionRecord, DataError, ImageRecord  # noqa: E402
from datamodules.synthetic.annotations import image_file  # noqa: E402
from datamodules.synthetic.datamodule import SyntheticDataModule  # noqa: E402
from datamodules.synthetic.generation import (  # noqa: E402
    CHUNK,
    _render,
    _spans,
    generate,
    image_id,
)
from datamodules.synthetic.options import SyntheticOptions  # noqa: E402
from datamodules.synthetic.relevance import caption_relevance  # noqa: E402
from datamodules.synthetic.workers import fork_map  # noqa: E402
from lightning_modules import blip2 as blip2_module  # noqa: E402

#: peak RSS may exceed the index by this much (issue 24)
RSS_SLACK_BYTES = 2 << 30
#: the largest size must finish within this (issue 24: "the 100k run finishes within 20 minutes")
TIME_LIMIT_S = 20 * 60
MODELS = ("blip2", "ours")
#: bump when the scale folder's files change for the same inputs
SCALE_FORMAT = 1


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def model_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in MODELS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"--models: choose from {', '.join(MODELS)}, got {text!r}")
    return values


def peak_rss() -> dict[str, int]:
    """Peak resident set size in bytes of this process and of its (waited-for) children. A forked
    child's maxrss starts from the pages it shares with its parent at the fork, so a short helper
    (e.g. ``git`` run by the result's environment record) reports about the parent's RSS then."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return {
        "self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


# -- the scale folder -------------------------------------------------------------------------
def scale_folder(root: Path, n_images: int, n_queries: int) -> Path:
    """Where the data of one size lives: named by the SynthScenes options it renders and the query count."""
    options = SyntheticOptions(n_test=n_images)
    key = json.dumps({"format": SCALE_FORMAT, "options": options.to_dict(), "queries": n_queries}, sort_keys=True)
    return Path(root) / f"scale-{n_images}-{n_queries}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def write_scale_data(folder: Path, n_images: int, n_queries: int, workers: int) -> dict[str, float]:
    """Render images 0..N-1 of the SynthScenes test split and write ``queries.json`` (the first
    ``n_queries`` captions with their relevance over the N scenes); atomic (temp folder, rename).
    Returns the timings (render, relevance)."""
    options = SyntheticOptions(n_test=n_images)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    timings: dict[str, float] = {}
    try:
        (tmp / "images" / "test").mkdir(parents=True)
        t = time.perf_counter()
        tasks = [(options, "test", tmp, lo, hi) for lo, hi in _spans(n_images, CHUNK)]
        rendered = [r for part in fork_map(_render, tasks, workers) for r in part]
        timings["render_s"] = time.perf_counter() - t
        t = time.perf_counter()
        scenes = [scene for scene, _ in rendered]
        flat = [(i, level, c) for i, (_, caps) in enumerate(rendered) for level, c in caps][:n_queries]
        if len(flat) < n_queries:
            raise ValueError(f"--queries {n_queries}: the first {n_images} images have only {len(flat)} captions")
        relevant = caption_relevance(scenes, [c for _, _, c in flat])
        timings["relevance_s"] = time.perf_counter() - t
        doc = {
            "format": "synthscenes-scale",
            "version": SCALE_FORMAT,
            "options": options.to_dict(),
            "n_images": n_images,
            "scenes": [scene.to_json() for scene in scenes[: flat[-1][0] + 1]],
            "queries": [
                {"image": i, "text": c.text(), "complexity": level, "constraints": c.to_json(), "relevant": rel}
                for (i, level, c), rel in zip(flat, relevant, strict=True)
            ],
        }
        (tmp / "queries.json").write_text(json.dumps(doc, sort_keys=True))
        timings["workers"] = workers
        (tmp / "timings.json").write_text(json.dumps(timings, sort_keys=True))  # what writing it cost, for reruns
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return timings


def scale_datamodule_class():
    """:class:`ScaleScenes`, the suite's SynthScenes module serving a scale folder."""

    class ScaleScenes(SyntheticDataModule):
        """SynthScenes' test split as a scale folder serves it: every image of the gallery, the
        captions (queries) of the first images only, with relevance over the whole gallery."""

        def __init__(self, config, seed: int, folder: Path) -> None:
            super().__init__(config, seed)
            self.folder = Path(folder)

        @property
        def cache_dir(self) -> Path:
            return self.folder

        def prepare_data(self) -> None:
            if not (self.folder / "queries.json").is_file():
                raise DataError(f"{self.folder}: no queries.json (run scripts/bench_scale.py to write it)")

        def read_split(self, split: str):
            if split != "test":
                raise DataError(f"the scale folder holds the test split only, not {split!r}")
            path = self.folder / "queries.json"
            doc = json.loads(path.read_text())
            n = int(doc["n_images"])
            ids = [image_id("test", i) for i in range(n)]
            captions: dict[int, list] = {}
            for q in doc["queries"]:
                captions.setdefault(int(q["image"]), []).append(q)
            records = [
                ImageRecord(
                    image_id=ids[i],
                    path=self.folder / image_file("test", ids[i]),
                    captions=tuple(
                        CaptionRecord(q["text"], q["complexity"], q["constraints"]) for q in captions.get(i, [])
                    ),
                    metadata={"scene": doc["scenes"][i]} if i < len(doc["scenes"]) else {},
                    relevant_images=tuple(tuple(ids[j] for j in q["relevant"]) for q in captions.get(i, [])),
                )
                for i in range(n)
            ]
            return records, [path]

    return ScaleScenes


# -- children ---------------------------------------------------------------------------------
def prepare_data(n_images: int, n_queries: int, data_root: Path, workers: int, full_generator_max: int) -> dict:
    """The scale folder of one size, written now if absent (``cached``: it was there; ``data_s``
    and the render/relevance times are those of the run that wrote it, read from its
    ``timings.json``); with ``n_images <= full_generator_max`` also the suite's full generator
    timed on the same size (all annotations, into a temporary folder)."""
    folder = scale_folder(Path(data_root), n_images, n_queries)
    out: dict = {"folder": str(folder), "cached": (folder / "queries.json").is_file()}
    if not out["cached"]:
        t = time.perf_counter()
        write_scale_data(folder, n_images, n_queries, workers)
        total = time.perf_counter() - t
        stored = json.loads((folder / "timings.json").read_text())
        (folder / "timings.json").write_text(json.dumps(stored | {"data_s": total}, sort_keys=True))
    out |= json.loads((folder / "timings.json").read_text())
    if n_images <= full_generator_max:  # the suite's full generator, for comparison
        Path(data_root).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_root) as tmp:
            t = time.perf_counter()
            final = generate(SyntheticOptions(n_train=1, n_val=1, n_test=n_images), tmp, workers)
            out["full_generator_s"] = time.perf_counter() - t
            out["full_generator_annotation_bytes"] = (final / "annotations" / "test.json").stat().st_size
    return out


def _timed(obj, name: str, bucket: dict[str, float], inside: list[str], probe=None) -> None:
    """Replace ``obj.name`` by a timer that adds its wall time to ``bucket[name]`` (and to
    ``bucket[name + '@' + outer]`` when called inside another timed method ``outer``); ``probe()``
    (e.g. an RSS sample) runs as the call starts and as it ends, inside it."""
    fn = getattr(obj, name)

    def timed(*a, **k):
        outer = inside[-1] if inside else None
        inside.append(name)
        if probe is not None:
            probe()
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            dt = time.perf_counter() - t
            if probe is not None:
                probe()
            inside.pop()
            bucket[name] = bucket.get(name, 0.0) + dt
            bucket[f"{name}_calls"] = bucket.get(f"{name}_calls", 0) + 1
            if outer:
                bucket[f"{name}@{outer}"] = bucket.get(f"{name}@{outer}", 0.0) + dt

    setattr(obj, name, timed)


def child_eval(args) -> dict:
    torch.set_num_threads(args.threads)
    folder = scale_folder(Path(args.data_root), args.size, args.queries)
    with tempfile.TemporaryDirectory() as results_dir:
        cfg = build_run_config(
            model_defaults(args.model),
            {
                "model": args.model,
                "dataset": "synthetic",
                "size": "tiny",
                "cache_dir": args.cache_dir,
                "results_dir": results_dir,
                "checkpoint": args.checkpoint,
                "tag": f"scale{args.size}",
                "data": {"options": {"n_test": args.size}},
                "eval": {"directions": ["t2i"], "measure": False},
            },
        )
        t0 = time.perf_counter()
        model = REGISTRY.get(args.model).load_checkpoint(Path(args.checkpoint))
        load_s = time.perf_counter() - t0
        bucket: dict[str, float] = {}
        inside: list[str] = []
        sampler = RssSampler(
            lambda: inside[-1] if inside else "outside (start-up, features, loaders)", interval_s=args.rss_interval
        )
        for name in ("score", "itc_score", "itm_scores"):
            if hasattr(model, name):
                _timed(model, name, bucket, inside, sampler.sample)
        # stages for the RSS sampler only (their times are not reported): encoding batches, the
        # metric's gathering of its states, its scoring loop, and re-ranking inside ``score``
        for owner, name in (
            (RetrievalEvaluator, "test_step"),
            (RetrievalMetric, "compute"),
            (RetrievalMetric, "_collect"),
            (blip2_module, "rerank_topk"),
        ):
            _timed(owner, name, bucket, inside, sampler.sample)
        dm = scale_datamodule_class()(cfg.data, cfg.seed, folder)
        with sampler:
            outcome = runner._evaluate(cfg, RetrievalTask(), model, dm, t0, progress=False)
        total_s = time.perf_counter() - t0
    result = outcome.result
    assert result is not None
    m, tm = result["metrics"], result["timings"]
    features = result["provenance"].get("features", {}).get("test", {})
    first_stage = bucket.get("itc_score@score", bucket.get("itc_score", 0.0) if "score" not in bucket else 0.0)
    score = bucket.get("score", 0.0)
    itc_variant = bucket.get("itc_score", 0.0) - bucket.get("itc_score@score", 0.0)
    stages = {
        "load_checkpoint_s": load_s,
        "feature_extract_s": tm.get("features_test_extract_s", 0.0),
        "feature_load_s": tm.get("features_test_load_s", 0.0),
        "encode_images_s": tm.get("encode_images_s", 0.0),
        "encode_texts_s": tm.get("encode_texts_s", 0.0),
        "first_stage_s": first_stage,
        "rerank_s": score - first_stage,
        "itm_passes_s": bucket.get("itm_scores", 0.0),
        "itc_variant_s": itc_variant,
        "score_and_rank_s": tm.get("score_and_rank_s", 0.0),
        "metrics_bookkeeping_s": tm.get("score_and_rank_s", 0.0) - score - itc_variant,
        "evaluate_s": tm.get("evaluate_s", 0.0),
        "total_s": total_s,
    }
    n_queries = int(result["provenance"]["n_queries"])
    return {
        "checkpoint": args.checkpoint,
        "n_gallery": int(result["provenance"]["n_gallery_images"]),
        "n_queries": n_queries,
        "feature_cache_hit": bool(features.get("hit", False)),
        "features_memory_mapped": bool(features.get("memory_mapped", False)),
        "feature_file_bytes": int(features.get("bytes", 0)),
        "stages": stages,
        "calls": {k: int(v) for k, v in bucket.items() if k.endswith("_calls")},
        "scoring_ms_per_query": 1000 * score / max(n_queries, 1),
        "index_bytes": int(m["index/bytes"]),
        "index_bytes_per_image": float(m["index/bytes_per_image"]),
        "t2i_R@1": float(m["t2i/R@1"]),
        "t2i_R@5": float(m["t2i/R@5"]),
        "itc_t2i_R@1": float(m["itc/t2i/R@1"]) if "itc/t2i/R@1" in m else None,
        "rss": peak_rss(),
        "rss_by_stage": sampler.report(),
    }


def run_child(argv: list[str], timeout: float | None) -> dict:
    """Run this script as a child with ``argv``; its JSON answer (the child writes it to a file)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answer.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--answer", str(out)]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        )
        t = time.perf_counter()
        proc = subprocess.run(
            cmd, env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"child {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
        answer = json.loads(out.read_text())
    answer["child_wall_s"] = wall
    return answer


# -- the parent -------------------------------------------------------------------------------
def default_checkpoint(model: str, cache_dir: str, train: bool) -> str:
    """The checkpoint of ``bench run --model <model>``'s default tiny config (by training hash)."""
    cfg = build_run_config(
        model_defaults(model), {"model": model, "dataset": "synthetic", "size": "tiny", "cache_dir": cache_dir}
    )
    try:
        return str(ensure_checkpoint(cfg, progress=False, train=train)[0])
    except ConfigError as e:
        raise SystemExit(f"{e}\n(or rerun this script with --train, or give --{model}-checkpoint)") from e


def random_checkpoints(cache_dir: str, models: list[str]) -> dict[str, str]:
    """Untrained checkpoints of the default tiny architectures (``--random-init``): each model's
    default ``bench run`` config built by its own ``create`` (tokenizer from the default SynthScenes
    training captions, as training builds it) on the random checkpoint of its dependency (CLIP ->
    BLIP2 -> ours), saved under ``<cache>/scale/random``. Cost (time, memory, index bytes) is that
    of the trained models (same shapes); quality is chance, and ours' QScaler is untrained."""
    out: dict[str, str] = {}
    chain = [("clip", None), ("blip2", "vision_checkpoint"), ("ours", "blip2_checkpoint")]
    previous = None
    for model, dep_field in chain:
        if model != "clip" and model not in models and not (model == "blip2" and "ours" in models):
            continue
        cfg = build_run_config(
            model_defaults(model), {"model": model, "dataset": "synthetic", "size": "tiny", "cache_dir": cache_dir}
        )
        folder = Path(cache_dir) / "scale" / "random" / f"{model}__{cfg.training_hash()}"
        if not folder.is_dir():
            parts = resolve_run(cfg)
            model_cls, model_config, dm = parts.model_cls, parts.model_config, parts.dm
            if dep_field:
                model_config = dc_replace(model_config, **{dep_field: previous})
            dm.prepare_data()
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            save_atomically(model_cls.create(model_config, cfg.train.optim, dm.vocabulary_texts()), folder)
        previous = str(folder)
        out[model] = previous
    return {m: out[m] for m in models}


def rss_target(run: dict) -> dict:
    peak = max(run["rss"]["self_bytes"], run["rss"]["children_bytes"])
    limit = run["index_bytes"] + RSS_SLACK_BYTES
    return {"peak_rss_bytes": peak, "limit_bytes": limit, "ok": peak <= limit}


def check_targets(sizes: list[int], results: dict, models: list[str]) -> dict:
    targets: dict = {"rss": {}, "per_query_scaling": {}, "time_largest": {}}
    for model in models:
        targets["rss"][model] = {str(n): rss_target(results[str(n)]["models"][model]) for n in sizes}
        ratios = []
        for a, b in itertools.pairwise(sizes):
            ra, rb = results[str(a)]["models"][model], results[str(b)]["models"][model]
            row = {"from": a, "to": b, "size_ratio": b / a}
            for key, get in (
                ("scoring", lambda r: r["scoring_ms_per_query"]),
                ("first_stage", lambda r: r["stages"]["first_stage_s"]),
                ("rerank", lambda r: r["stages"]["rerank_s"]),
            ):
                row[f"{key}_ratio"] = get(rb) / max(get(ra), 1e-12)
            row["ok"] = row["scoring_ratio"] <= row["size_ratio"]
            ratios.append(row)
        targets["per_query_scaling"][model] = ratios
    largest = str(sizes[-1])
    data = results[largest]["data"]
    per_model = {m: results[largest]["models"][m]["child_wall_s"] for m in models}
    total = data["data_s"] + sum(per_model.values())
    targets["time_largest"] = {
        "size": sizes[-1],
        "limit_s": TIME_LIMIT_S,
        "per_model_s": per_model,
        "per_model_ok": {m: s <= TIME_LIMIT_S for m, s in per_model.items()},
        "data_s": data["data_s"],
        "everything_s": total,
        "everything_ok": total <= TIME_LIMIT_S,
        "note": "per model: the child's wall time (start-up, checkpoint load, feature extraction or cache hit, "
        "encoding, scoring, re-ranking); everything: data generation (as timed when the folder was "
        "written) plus every model's child (the full-generator comparison excluded)",
    }
    return targets


def fmt_bytes(b: float) -> str:
    return f"{b / 2**20:.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def print_run(n: int, model: str, r: dict) -> None:
    s = r["stages"]
    hit = "cache hit" if r["feature_cache_hit"] else "extracted"
    print(
        f"  {model:6s} N={n}: wall {r['child_wall_s']:.1f} s | features {hit} {s['feature_extract_s']:.1f} s "
        f"(load {s['feature_load_s']:.2f} s{', memory-mapped' if r['features_memory_mapped'] else ''}) | "
        f"encode images {s['encode_images_s']:.1f} s, texts {s['encode_texts_s']:.1f} s | first stage "
        f"{s['first_stage_s']:.2f} s, re-rank {s['rerank_s']:.2f} s (ITM passes {s['itm_passes_s']:.2f} s), "
        f"ITC variant {s['itc_variant_s']:.2f} s, bookkeeping {s['metrics_bookkeeping_s']:.2f} s | "
        f"{r['scoring_ms_per_query']:.2f} ms/query | peak RSS {fmt_bytes(r['rss']['self_bytes'])} | index "
        f"{fmt_bytes(r['index_bytes'])} ({r['index_bytes_per_image']:.0f} B/image) | "
        f"t2i R@1 {r['t2i_R@1']:.4f} R@5 {r['t2i_R@5']:.4f}",
        flush=True,
    )
    stages = r.get("rss_by_stage", [])
    if stages:
        print(
            "    peak RSS by stage: "
            + "; ".join(
                f"{row['stage']} {fmt_bytes(row['rss_bytes'])} (anon {fmt_bytes(row.get('anon_bytes', 0))}, "
                f"file {fmt_bytes(row.get('file_bytes', 0))})"
                for row in stages
            ),
            flush=True,
        )


def print_targets(t: dict) -> None:
    print("targets:")
    for model, rows in t["rss"].items():
        for n, row in rows.items():
            print(
                f"  RSS {model} N={n}: peak {fmt_bytes(row['peak_rss_bytes'])} <= index + 2 GiB "
                f"{fmt_bytes(row['limit_bytes'])}: {'OK' if row['ok'] else 'FAIL'}"
            )
    for model, rows in t["per_query_scaling"].items():
        for row in rows:
            print(
                f"  per-query scoring {model} {row['from']}->{row['to']}: x{row['scoring_ratio']:.2f} "
                f"(first stage x{row['first_stage_ratio']:.2f}, re-rank x{row['rerank_ratio']:.2f}) "
                f"<= size x{row['size_ratio']:.0f}: {'OK' if row['ok'] else 'FAIL'}"
            )
    tl = t["time_largest"]
    for model, s in tl["per_model_s"].items():
        print(
            f"  N={tl['size']} {model}: {s:.0f} s <= {tl['limit_s']} s: {'OK' if tl['per_model_ok'][model] else 'FAIL'}"
        )
    print(
        f"  N={tl['size']} everything (data {tl['data_s']:.0f} s + models): {tl['everything_s']:.0f} s <= "
        f"{tl['limit_s']} s: {'OK' if tl['everything_ok'] else 'FAIL'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int_list, default=[1000, 10000, 100000], help="gallery sizes (test images)")
    p.add_argument("--queries", type=int, default=1000, help="text queries: the first captions of the split")
    p.add_argument("--models", type=model_list, default=list(MODELS), help="comma-separated: blip2,ours")
    p.add_argument("--threads", type=int, default=2, help="torch threads and generation workers")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--cache-dir", default=default_cache_dir(), help="suite cache (checkpoints, feature cache)")
    p.add_argument("--data-root", default=None, help="where the scale folders go (default <cache>/scale)")
    p.add_argument("--train", action="store_true", help="train the default tiny checkpoints if absent")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="untrained checkpoints of the default tiny architectures (cost only: quality is chance)",
    )
    p.add_argument("--blip2-checkpoint", default=None)
    p.add_argument("--ours-checkpoint", default=None)
    p.add_argument(
        "--full-generator-max",
        type=int,
        default=10000,
        help="also time the suite's full generator (every annotation) up to this many images (0: never)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    p.add_argument(
        "--rss-interval", type=float, default=0.1, help="seconds between the RSS samples that give the peak per stage"
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="combine the --out files of separate runs into one (targets checked over every size)",
    )
    # internal: child processes
    p.add_argument("--child", choices=("eval",), default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--answer", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.queries < 1:
        p.error("--queries must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.timeout <= 0 or args.timeout != args.timeout:
        p.error("--timeout must be a positive number of seconds")
    if not 0.001 <= args.rss_interval <= 60:  # also refuses NaN
        p.error("--rss-interval must be a number of seconds in [0.001, 60]")
    if args.full_generator_max < 0:
        p.error("--full-generator-max must be >= 0")
    args.data_root = args.data_root or str(Path(args.cache_dir) / "scale")
    return args


def common_argv(args) -> list[str]:
    return [
        "--queries",
        str(args.queries),
        "--threads",
        str(args.threads),
        "--cache-dir",
        args.cache_dir,
        "--data-root",
        args.data_root,
        "--rss-interval",
        str(args.rss_interval),
    ]


def merge(paths: list[Path]) -> dict:
    """One output from the outputs of separate runs (e.g. the small sizes, then the largest alone):
    their results side by side and the targets checked again over every size. The runs must agree
    on queries, models and threads."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("queries", "models", "threads", "direction", "random_init")
    for run in runs[1:]:
        if any(run["config"].get(k) != runs[0]["config"].get(k) for k in keys):
            raise SystemExit(
                f"--merge: runs differ in {', '.join(k for k in keys if run['config'].get(k) != runs[0]['config'].get(k))}"
            )
    results = {n: r for run in runs for n, r in run["results"].items()}
    sizes = sorted(int(n) for n in results)
    out = dict(runs[0])
    out["config"] = runs[0]["config"] | {
        "sizes": sizes,
        "merged_from": [str(p) for p in paths],
        "environments": [run["environment"] for run in runs],
    }
    out["results"] = {str(n): results[str(n)] for n in sizes}
    out["targets"] = check_targets(sizes, out["results"], runs[0]["config"]["models"])
    print_targets(out["targets"])
    return out


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.merge:
        out = merge(args.merge)
        write_json(out, args.out, roots(args))
        return out
    if args.child:
        Path(args.answer).write_text(json.dumps(child_eval(args)))
        return None
    randoms = random_checkpoints(args.cache_dir, args.models) if args.random_init else {}
    checkpoints = {
        m: getattr(args, f"{m}_checkpoint") or randoms.get(m) or default_checkpoint(m, args.cache_dir, args.train)
        for m in args.models
    }
    print(f"checkpoints: {checkpoints}", flush=True)
    results: dict = {}
    for n in args.sizes:
        print(f"N={n}: data ...", flush=True)
        data = prepare_data(n, args.queries, Path(args.data_root), args.threads, args.full_generator_max)
        gen = (
            f", full generator {data['full_generator_s']:.1f} s ({fmt_bytes(data['full_generator_annotation_bytes'])} "
            "of test annotations)"
            if "full_generator_s" in data
            else ""
        )
        print(f"  data N={n}: {'cached' if data['cached'] else 'written'} in {data['data_s']:.1f} s{gen}", flush=True)
        results[str(n)] = {"data": data, "models": {}}
        for model in args.models:
            r = run_child(
                [
                    "--child",
                    "eval",
                    "--size",
                    str(n),
                    "--model",
                    model,
                    "--checkpoint",
                    checkpoints[model],
                    *common_argv(args),
                ],
                args.timeout,
            )
            results[str(n)]["models"][model] = r
            print_run(n, model, r)
    targets = check_targets(args.sizes, results, args.models)
    print_targets(targets)
    out = {
        "script": "scripts/bench_scale.py",
        "config": {
            "sizes": args.sizes,
            "queries": args.queries,
            "models": args.models,
            "threads": args.threads,
            "direction": "t2i",
            "checkpoints": checkpoints,
            "random_init": args.random_init,
        },
        "environment": environment() | {"load_average_at_end": list(os.getloadavg())},
        "results": results,
        "targets": targets,
    }
    write_json(out, args.out, roots(args))
    return out


def roots(args: argparse.Namespace) -> dict[str, str]:
    """The folders recorded paths are written relative to (no machine path in the output)."""
    return {"cache": args.cache_dir, "data": args.data_root}


def write_json(out: dict, path: Path | None, path_roots: dict[str, str]) -> None:
    """``out`` as JSON at ``path``, atomically and with every absolute path made portable
    (benchmark.portable); nothing without a path."""
    if path is None:
        return
    atomic_write_text(path, json.dumps(portable(out, path_roots), indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
