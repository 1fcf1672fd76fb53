"""Compare feedback settings on one split with the model loaded and scored once.

The settings of ``bench feedback`` (user model, thresholds, noise, refresh weights and
kernel) are chosen on the **val** split; running the whole command per setting would encode
the gallery and score round 0 every time. This script does both once, then runs the suite's
own :func:`~benchmark.feedback.protocol.run_protocol` (arms ``exclude`` and ``refresh``;
image-image rows and the top-k table shared by every setting) per setting of a grid, and
prints Hits@K and BRI at round ``--at`` with the paired bootstrap interval of refresh -
exclude (:mod:`benchmark.reporting.feedback_stats`, B = 1000, seed 0).

Each setting is ``[TAG[@SEEDS]:]OVERRIDES``: ``--feedback-set`` style overrides separated by
spaces, optionally after a tag (names the result file with ``--results-dir``) and the user
seeds of that setting (else ``--seeds``), e.g.::

    PYTHONPATH=$PWD python scripts/feedback_sweep.py --split val --max-queries 1000 --rounds 3 \\
        "user.model=binary" "user.noise=0 refresh.kernel=mean refresh.w_ps=1" ...
    PYTHONPATH=$PWD python scripts/feedback_sweep.py --split test --max-queries 2000 \\
        --arms none,exclude,refresh,llm --results-dir results "graded@0,1,2:" "binary@0:user.model=binary"

The model is the one ``bench feedback`` uses for the same run flags (``--set``,
``--cache-dir``, ``--seed``): its cached checkpoint, trained first if absent.

``--scene-similarity L`` (SynthScenes only, a diagnostic, never a product setting): the
refresh kernels read ``L z(scene) + (1 - L) z(model)`` instead of the model's image-image
rows, ``z`` a row standardised over the gallery
(:func:`~benchmark.feedback.kernels.standardised`) and ``scene`` the cosine of the two images'
bags of scene attributes (:func:`scene_similarity`: ground truth no system has). It measures
how much refreshing could gain with an image representation that encodes the scene.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmark.config import RunConfig, deep_merge, from_dict, parse_set
from benchmark.environment import environment
from benchmark.feedback.config import FeedbackConfig
from benchmark.feedback.gallery_encoding import encode_gallery
from benchmark.feedback.kernels import standardised
from benchmark.feedback.llm.registry import make_backend
from benchmark.feedback.protocol import run_protocol
from benchmark.feedback.record import build_result, result_paths
from benchmark.feedback.refine import Refiner
from benchmark.feedback.session import load_model
from benchmark.feedback.similarity import GalleryScorer, score_function
from benchmark.feedback.task import from_eval_set
from benchmark.feedback.user import SimulatedUser
from benchmark.reporting.feedback_stats import feedback_stats
from benchmark.reporting.options import ReportOptions
from benchmark.results import atomic_write_json
from benchmark.run_flags import CliConfig
from datamodules.synthetic.scene import Scene
from lightning_modules.base import Encoded


def scene_similarity(scenes: Sequence[Scene]) -> torch.Tensor:
    """``[G, G]`` cosine of the scenes' attribute bags: per object one count each for its
    shape, colour, size, row, column and (colour, shape); one each for the background's
    pattern and colour."""
    bags = []
    for scene in scenes:
        bag: dict[tuple[str, ...], float] = {}
        atoms = [("pattern", scene.background.pattern), ("background", scene.background.colour)]
        for o in scene.objects:
            atoms += [("shape", o.shape), ("colour", o.colour), ("size", o.size), ("row", o.row)]
            atoms += [("column", o.column), ("kind", o.colour, o.shape)]
        for atom in atoms:
            bag[atom] = bag.get(atom, 0.0) + 1.0
        bags.append(bag)
    index = {a: i for i, a in enumerate(sorted({a for bag in bags for a in bag}))}
    x = torch.zeros(len(bags), len(index))
    for row, bag in enumerate(bags):
        for atom, count in bag.items():
            x[row, index[atom]] = count
    x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T


class Round0Scorer(GalleryScorer):
    """A GalleryScorer whose ``scores`` reads precomputed round-0 rows when the "queries" it
    is given are their indices (``Encoded([Q, 1])`` in float64, which no model encodes to);
    new texts (the llm arm's refined queries) go to the model as usual, and so do image-image
    rows unless ``scene`` (``[G, G]``) is given with ``mix`` > 0: then each row is
    ``mix z(scene) + (1 - mix) z(model)``."""

    def __init__(self, *args, round0: torch.Tensor, scene: torch.Tensor | None = None, mix: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.round0 = round0
        self.scene, self.mix = scene, mix

    def _score_rows(self, items: torch.Tensor):
        if self.scene is None or self.mix == 0:
            yield from super()._score_rows(items)
            return
        if self.mix == 1:
            for s in range(0, len(items), self.row_chunk):
                part = items[s : s + self.row_chunk]
                yield part, standardised(self.scene[part])
            return
        for part, rows in super()._score_rows(items):
            yield part, self.mix * standardised(self.scene[part]) + (1 - self.mix) * standardised(rows.cpu())

    def scores(self, queries: Encoded) -> torch.Tensor:
        if queries.emb.dtype == torch.float64 and queries.emb.shape[-1] == 1:
            return self.round0[queries.emb[:, 0].long()]
        return super().scores(queries)


def sweep_run_config(
    model: str, dataset: str, split: str, sets: Sequence[str] = (), cache_dir: Path | None = None
) -> RunConfig:
    """The run config of ``bench feedback --model M --dataset D --seed 0`` (tiny size) evaluated on
    ``split``: the same builder as the CLI (:class:`benchmark.run_flags.CliConfig`), so the same
    cached checkpoint whatever the split."""
    given = {"model": model, "dataset": dataset, "size": "tiny", "tag": "sweep", "seed": 0}
    given |= {"results_dir": Path("/tmp"), "cache_dir": cache_dir}
    return CliConfig(given=given, sets=(f"data.eval_split={split}", *sets)).build()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="space-separated feedback overrides per setting")
    ap.add_argument("--model", default="ours")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--at", type=int, default=3, help="the round compared")
    ap.add_argument("--seeds", default="0", help="comma-separated user seeds (feedback.seed)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--arms", default="exclude,refresh", help="comma-separated arms (llm: the rules writer)")
    ap.add_argument(
        "--round0-cache",
        type=Path,
        default=None,
        help="round-0 scores saved here on the first run and read back after (same split and queries)",
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="write a result file per setting and seed (tag: the setting's 'TAG:' prefix, then -s<seed>)",
    )
    ap.add_argument(
        "--scene-similarity",
        type=float,
        default=0.0,
        metavar="L",
        help="diagnostic: mix of the scene-graph similarity in the image-image rows, in [0, 1] (module doc)",
    )
    args = ap.parse_args()
    if not 0.0 <= args.scene_similarity <= 1.0:
        raise SystemExit(f"--scene-similarity must be in [0, 1], got {args.scene_similarity}")

    cfg = sweep_run_config(args.model, args.dataset, args.split, args.sets, args.cache_dir)
    t0 = time.perf_counter()
    model, dm, _ = load_model(cfg)
    model = model.eval()
    gallery = encode_gallery(model, dm, "cpu", cfg.cache_dir, cfg.eval.memmap_min_mb)
    es = dm.eval_set()
    records = dm.records(dm.config.eval_split)
    task = from_eval_set(es, records).limited(args.max_queries)
    scene = None
    if args.scene_similarity > 0:
        if not all("scene" in r.metadata for r in records):
            raise SystemExit(f"--scene-similarity needs scene graphs: dataset {args.dataset!r} has none")
        scene = scene_similarity([Scene.from_json(r.metadata["scene"]) for r in records])
    base = GalleryScorer(model, gallery, score_function(model, None), batch_size=256)
    if args.round0_cache is not None and args.round0_cache.exists():
        round0 = torch.load(args.round0_cache, weights_only=True)
        if round0.shape != (task.n_queries, task.n_gallery):
            raise SystemExit(f"{args.round0_cache}: round-0 scores of another task {tuple(round0.shape)}")
    else:
        round0 = base.scores(base.encode_texts(task.queries))
        if args.round0_cache is not None:
            tmp = args.round0_cache.with_suffix(".tmp")
            torch.save(round0, tmp)
            tmp.replace(args.round0_cache)
    print(
        f"{task.n_queries} queries x {task.n_gallery} images ({args.split}); loaded and scored in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    index = Encoded(torch.arange(task.n_queries, dtype=torch.float64)[:, None])
    arms = args.arms.split(",")
    scorers: dict[tuple, Round0Scorer] = {}  # one per similarity setting: rows and table reused
    rows = []
    options = ReportOptions()
    for setting in args.settings:
        head, _, overrides = setting.rpartition(":")
        tag, _, seeds = head.partition("@")
        for seed in (int(s) for s in (seeds or args.seeds).split(",")):
            over = deep_merge({"rounds": args.rounds, "arms": arms, "seed": seed}, parse_set(overrides.split()))
            fb = from_dict(FeedbackConfig, over, "feedback")
            sim = fb.image_similarity()
            key = (sim["reads"], sim["top_k"])
            if key not in scorers:
                scorers[key] = Round0Scorer(
                    model,
                    gallery,
                    base.score_fn,
                    batch_size=fb.chunk_size,
                    row_chunk=sim["row_chunk"],
                    top_k=sim["top_k"],
                    row_cache_mb=fb.similarity.row_cache_mb,
                    round0=round0,
                    scene=scene,
                    mix=args.scene_similarity,
                )
            user = SimulatedUser.from_config(task.truths, task.closeness, fb.user, seed)
            backend = make_backend(fb.llm) if "llm" in fb.arms else None
            t = time.perf_counter()
            res = run_protocol(
                task, scorers[key], index, fb, user, Refiner(backend, fb.llm) if backend is not None else None
            )
            if args.results_dir is not None:
                run_cfg = replace(cfg, tag=f"{tag or 'sweep'}-s{seed}", results_dir=str(args.results_dir))
                result = build_result(
                    run_cfg,
                    fb,
                    res,
                    task,
                    llm=backend.describe() if backend else None,
                    user_seed=seed,
                    environment=environment("cpu"),
                    provenance=es.provenance()
                    | {"script": "scripts/feedback_sweep.py", "scene_similarity": args.scene_similarity},
                    timings={"protocol_s": time.perf_counter() - t, **res.timings},
                    transcript=Path("none"),
                )
                atomic_write_json(result_paths(run_cfg)[0], result)
            stats = feedback_stats(res.ranks, fb.success_k, options)
            d = next(x for x in stats.differences if x.arm == "refresh")
            ex, rf = stats.series["exclude"], stats.series["refresh"]
            at = args.at
            row = {
                "setting": setting,
                "seed": seed,
                "hits_exclude": ex.hits[at].value,
                "hits_refresh": rf.hits[at].value,
                "d_hits": d.hits[at].diff,
                "d_hits_lo": d.hits[at].lo,
                "d_hits_hi": d.hits[at].hi,
                "bri_exclude": ex.bri[at].value,
                "bri_refresh": rf.bri[at].value,
                "d_bri": d.bri[at].diff,
                "d_bri_lo": d.bri[at].lo,
                "d_bri_hi": d.bri[at].hi,
                "marks": res.marks().get("refresh", {}),
                "seconds": time.perf_counter() - t,
                # the refresh arm's own time per query and round (marks and logging included)
                "refresh_ms_per_query_round": 1000
                * res.timings.get("arm_refresh_s", 0.0)
                / (task.n_queries * args.rounds),
            }
            rows.append(row)
            print(
                f"[{setting}] seed {seed}: Hits@{fb.success_k} r{at} exclude {row['hits_exclude']:.4f} refresh "
                f"{row['hits_refresh']:.4f} Δ {row['d_hits']:+.4f} [{row['d_hits_lo']:+.4f}, {row['d_hits_hi']:+.4f}]"
                f" | BRI exclude {row['bri_exclude']:.4f} refresh {row['bri_refresh']:.4f} Δ {row['d_bri']:+.4f} "
                f"[{row['d_bri_lo']:+.4f}, {row['d_bri_hi']:+.4f}] | marks {row['marks']} ({row['seconds']:.0f} s)",
                flush=True,
            )
            if "llm" in res.ranks:
                dl = next(x for x in stats.differences if x.arm == "llm")
                print(
                    f"    llm {stats.series['llm'].hits[at].value:.4f} Δ {dl.hits[at].diff:+.4f} "
                    f"[{dl.hits[at].lo:+.4f}, {dl.hits[at].hi:+.4f}] | BRI {stats.series['llm'].bri[at].value:.4f} "
                    f"Δ {dl.bri[at].diff:+.4f} [{dl.bri[at].lo:+.4f}, {dl.bri[at].hi:+.4f}] | "
                    f"fallbacks {res.fallbacks()}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
